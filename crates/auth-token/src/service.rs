//! `/auth/token` and `/auth/refresh` without any transport: the Lambda and `xomcloud serve`
//! both call `AuthTokenService::handle` with a method, the request path and the body.
//!
//! Logs name the operation, the form's field names and the upstream status and OAuth `error`
//! code; never a value of the form (the client secret, the code, the verifier, a token).

use std::sync::Arc;

use http::{header, HeaderValue, Method, Response};
use serde_json::{Map, Value};
use xomcloud_common::config::{ConfigError, Secret, Secrets, Settings};
use xomcloud_common::response::Cors;
use xomcloud_common::ApiError;

use crate::grant::{self, Operation};
use crate::upstream::{EndpointError, Failure, HttpTokenEndpoint, Reply, TokenEndpoint};

pub struct AuthTokenService {
    endpoint: Arc<dyn TokenEndpoint>,
    secrets: Secrets,
    cors: Cors,
}

impl AuthTokenService {
    pub fn new(endpoint: Arc<dyn TokenEndpoint>, secrets: Secrets, cors: Cors) -> Self {
        Self {
            endpoint,
            secrets,
            cors,
        }
    }

    /// The service against `SOUNDCLOUD_TOKEN_URL`, with `SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS`.
    pub fn from_settings(settings: &Settings, secrets: Secrets) -> Result<Self, EndpointError> {
        let endpoint = HttpTokenEndpoint::new(
            &settings.soundcloud_token_url,
            settings.soundcloud_token_timeout,
        )?;
        Ok(Self::new(
            Arc::new(endpoint),
            secrets,
            Cors::new(settings.cors_allow_origin.as_deref()),
        ))
    }

    /// `path` picks the operation (`…/refresh` or not); the body may override it.
    pub async fn handle(&self, method: &Method, path: &str, body: &[u8]) -> Response<String> {
        let mut response = match *method {
            Method::OPTIONS => self.cors.preflight(),
            Method::POST => match self.exchange(path, body).await {
                Ok(response) => response,
                Err(err) => self.cors.error(&err),
            },
            _ => self.cors.error(&ApiError::NotFound(format!(
                "{method} is not supported; use POST"
            ))),
        };
        // The sign-in is a credentialed cross-origin call; the origin is never `*`.
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        response
    }

    async fn exchange(&self, path: &str, body: &[u8]) -> Result<Response<String>, ApiError> {
        let grant = grant::parse(body, Operation::from_path(path)).inspect_err(|err| {
            tracing::warn!(reason = err.public_message(), "invalid token request");
        })?;
        let operation = grant.operation().as_str();
        let client_id = self.secret(Secret::SoundcloudClientId).await?;
        let client_secret = self.secret(Secret::SoundcloudClientSecret).await?;
        let form = grant.form(client_id, client_secret);
        tracing::info!(
            operation,
            fields = ?form.field_names(),
            "forwarding the token request to SoundCloud"
        );
        match self.endpoint.exchange(&form).await {
            Ok(reply) => Ok(self.pass_through(operation, reply)),
            Err(Failure::Timeout(after)) => {
                tracing::error!(operation, timeout = ?after, "SoundCloud's token endpoint timed out");
                Err(ApiError::UpstreamTimeout(
                    "SoundCloud did not respond in time".into(),
                ))
            }
            Err(Failure::Unreachable(cause)) => {
                tracing::error!(operation, %cause, "SoundCloud's token endpoint is unreachable");
                Err(ApiError::Upstream {
                    status: 502,
                    message: "Failed to reach SoundCloud".into(),
                })
            }
            Err(Failure::TooLarge { status }) => {
                tracing::error!(operation, status, "SoundCloud's token answer is too large");
                Err(ApiError::Upstream {
                    status: 502,
                    message: "SoundCloud returned an oversized response".into(),
                })
            }
        }
    }

    /// A missing or empty client id or secret is a deployment mistake (`CONFIG_ERROR`); SSM
    /// failing to answer is not.
    async fn secret(&self, secret: Secret) -> Result<String, ApiError> {
        match self.secrets.get(secret).await {
            Ok(value) => Ok(value),
            Err(err @ (ConfigError::MissingSecret { .. } | ConfigError::Empty { .. })) => {
                tracing::error!(error = %err, "the auth proxy is not configured");
                Err(ApiError::Config("Auth proxy is not configured".into()))
            }
            Err(err) => Err(ApiError::internal(err)),
        }
    }

    /// SoundCloud's status and JSON object as they came, minus any `client_secret` key.
    fn pass_through(&self, operation: &str, reply: Reply) -> Response<String> {
        let Reply { status, body } = reply;
        let mut object = match upstream_object(&body) {
            Ok(object) => object,
            Err(message) => {
                tracing::warn!(
                    operation,
                    status,
                    "SoundCloud's token answer is not a JSON object"
                );
                return self.cors.error(&ApiError::Upstream {
                    status,
                    message: message.into(),
                });
            }
        };
        if status >= 400 {
            let error = object.get("error").and_then(Value::as_str);
            tracing::warn!(
                operation,
                status,
                error = oauth_error_code(error),
                "SoundCloud refused the token request"
            );
        } else {
            tracing::info!(operation, status, "SoundCloud answered the token request");
        }
        if object.remove("client_secret").is_some() || object.is_empty() {
            return self.cors.json(status, &Value::Object(object));
        }
        // The bytes as they came (key order, number formats): there is nothing to remove.
        let mut response = self.cors.json(status, &Value::Null);
        *response.body_mut() = String::from_utf8_lossy(&body).into_owned();
        response
    }
}

/// The answer as a JSON object (an empty body counts as `{}`), or why it is not one.
fn upstream_object(body: &[u8]) -> Result<Map<String, Value>, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("Unexpected upstream response shape"),
        Err(_) => Err("SoundCloud returned a non-JSON response"),
    }
}

/// The OAuth error codes (RFC 6749 5.2 and 4.1.2.1, RFC 6750) are safe to log; any other text
/// might echo a credential, so it is logged as `other`.
fn oauth_error_code(error: Option<&str>) -> &str {
    const KNOWN: [&str; 11] = [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "unsupported_response_type",
        "server_error",
        "temporarily_unavailable",
        "invalid_token",
    ];
    match error {
        Some(code) => KNOWN.into_iter().find(|k| *k == code).unwrap_or("other"),
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use xomcloud_common::config::EnvSecrets;

    use super::*;
    use crate::grant::Form;

    type Answer = fn() -> Result<Reply, Failure>;

    /// Answers with a set reply and remembers the form.
    struct Fake {
        reply: Answer,
        seen: Mutex<Vec<Vec<(&'static str, String)>>>,
    }

    #[async_trait]
    impl TokenEndpoint for Fake {
        async fn exchange(&self, form: &Form) -> Result<Reply, Failure> {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(form.fields().to_vec());
            (self.reply)()
        }
    }

    fn service(reply: Answer, configured: bool) -> (AuthTokenService, Arc<Fake>) {
        let fake = Arc::new(Fake {
            reply,
            seen: Mutex::default(),
        });
        let mut env = EnvSecrets::default();
        if configured {
            env = env
                .with(Secret::SoundcloudClientId, "cid")
                .with(Secret::SoundcloudClientSecret, "csecret");
        }
        let secrets = Secrets::new("/xomcloud").source(env);
        let service = AuthTokenService::new(fake.clone(), secrets, Cors::new(None));
        (service, fake)
    }

    fn reply(status: u16, body: &str) -> Result<Reply, Failure> {
        Ok(Reply {
            status,
            body: body.as_bytes().to_vec(),
        })
    }

    const TOKEN_BODY: &str = r#"{"code":"c","code_verifier":"v","redirect_uri":"u"}"#;

    async fn post(service: &AuthTokenService, path: &str, body: &str) -> (u16, String) {
        let r = service.handle(&Method::POST, path, body.as_bytes()).await;
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        assert_eq!(r.headers()["content-type"], "application/json");
        (r.status().as_u16(), r.body().clone())
    }

    #[tokio::test]
    async fn upstream_json_passes_through_byte_for_byte() {
        let (s, fake) = service(
            || reply(200, r#"{"expires_in": 3600.0, "access_token": "a"}"#),
            true,
        );
        let (status, body) = post(&s, "/auth/token", TOKEN_BODY).await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"expires_in": 3600.0, "access_token": "a"}"#);
        assert_eq!(
            fake.seen.lock().unwrap()[0][2],
            ("client_secret", "csecret".into())
        );
    }

    #[tokio::test]
    async fn a_client_secret_key_is_removed() {
        let (s, _) = service(
            || {
                reply(
                    401,
                    r#"{"error":"invalid_client","client_secret":"csecret"}"#,
                )
            },
            true,
        );
        let (status, body) = post(&s, "/auth/token", TOKEN_BODY).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"error":"invalid_client"}"#)
        );
    }

    #[tokio::test]
    async fn bad_upstream_bodies_keep_the_upstream_status() {
        let (s, _) = service(|| reply(503, "<html>down</html>"), true);
        let (status, body) = post(&s, "/auth/token", TOKEN_BODY).await;
        assert_eq!(status, 503);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "UPSTREAM_ERROR");
        let (s, _) = service(|| reply(200, "[1]"), true);
        let (status, body) = post(&s, "/auth/token", TOKEN_BODY).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("Unexpected upstream response shape"),
            "{body}"
        );
        let (s, _) = service(|| reply(200, ""), true);
        assert_eq!(
            post(&s, "/auth/token", TOKEN_BODY).await,
            (200, "{}".into())
        );
    }

    #[tokio::test]
    async fn failures_map_to_504_502_and_500() {
        let cases: [(Answer, u16, &str); 3] = [
            (
                || Err(Failure::Timeout(std::time::Duration::from_secs(1))),
                504,
                "UPSTREAM_TIMEOUT",
            ),
            (
                || Err(Failure::Unreachable("refused".into())),
                502,
                "UPSTREAM_ERROR",
            ),
            (
                || Err(Failure::TooLarge { status: 200 }),
                502,
                "UPSTREAM_ERROR",
            ),
        ];
        for (fail, code, name) in cases {
            let (s, _) = service(fail, true);
            let (status, body) = post(&s, "/auth/token", TOKEN_BODY).await;
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!((status, v["error"]["code"].as_str()), (code, Some(name)));
        }
        let (s, fake) = service(|| reply(200, "{}"), false);
        let (status, body) = post(&s, "/auth/refresh", r#"{"refresh_token":"r"}"#).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 500);
        assert_eq!(v["error"]["code"], "CONFIG_ERROR");
        assert_eq!(v["error"]["message"], "Auth proxy is not configured");
        assert!(fake.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn validation_comes_before_configuration_and_upstream() {
        let (s, fake) = service(|| reply(200, "{}"), false);
        let (status, body) = post(&s, "/prod/auth/refresh", "{}").await;
        assert_eq!(status, 400);
        assert!(
            body.contains("Missing required field: refresh_token"),
            "{body}"
        );
        assert!(fake.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn options_is_the_preflight_and_other_methods_are_refused() {
        let (s, _) = service(|| reply(200, "{}"), true);
        let r = s.handle(&Method::OPTIONS, "/auth/token", b"").await;
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        let r = s.handle(&Method::GET, "/auth/token", b"").await;
        assert_eq!(r.status(), 404);
    }

    #[test]
    fn only_oauth_error_codes_are_logged() {
        assert_eq!(oauth_error_code(Some("invalid_grant")), "invalid_grant");
        assert_eq!(oauth_error_code(Some("code abc was bad")), "other");
        assert_eq!(oauth_error_code(Some("access-tok-a9e4f1")), "other");
        assert_eq!(oauth_error_code(None), "none");
    }
}
