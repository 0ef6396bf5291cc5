//! End to end: the compiled `xomcloud-auth-token` driven through the Lambda Runtime API with
//! API Gateway events (REST v1 and HTTP API v2), SoundCloud's token endpoint replaced by a fake
//! served by the test (`tests/fake_soundcloud`), SSM by moto where the test needs it.

mod fake_soundcloud;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use fake_soundcloud::{Answer, FakeSoundCloud};
use serde_json::{json, Value};
use support::bins::workspace_bin;
use support::moto::Moto;
use support::runtime_api::{proxy_headers, spawn_function, LambdaProcess, RuntimeApi};

const CLIENT_ID: &str = "sc-client-id-4d2b";
const CLIENT_SECRET: &str = "sc-client-secret-9f8e7d6c";
const CODE: &str = "auth-code-3b1a77";
const VERIFIER: &str = "pkce-verifier-77c2e0a1b9";
const REDIRECT_URI: &str = "https://xomcloud.xomware.com/callback";
const REFRESH_TOKEN: &str = "refresh-tok-51d0c3";
const ACCESS_TOKEN: &str = "access-tok-a9e4f1";
const NEW_REFRESH_TOKEN: &str = "refresh-tok-rotated-22f1";
const ORIGIN: &str = "https://xomcloud.xomware.com";

/// Values that must never appear in the function's logs.
const NEVER_LOGGED: [&str; 6] = [
    CLIENT_SECRET,
    CODE,
    VERIFIER,
    REFRESH_TOKEN,
    ACCESS_TOKEN,
    NEW_REFRESH_TOKEN,
];

/// SoundCloud's answer to a good exchange, with its own spacing and key order.
fn tokens_json() -> String {
    format!(
        r#"{{"access_token": "{ACCESS_TOKEN}", "expires_in": 3599, "refresh_token": "{NEW_REFRESH_TOKEN}", "scope": "", "token_type": "bearer"}}"#
    )
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Rest,
    Http,
}

fn fixture(format: Format) -> Value {
    let name = match format {
        Format::Rest => "rest-v1.json",
        Format::Http => "http-v2.json",
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth-token")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture as API Gateway sends it for `method path` (REST: stage `prod`) with `body`.
fn request(format: Format, method: &str, path: &str, body: Option<&str>) -> Value {
    let mut event = fixture(format);
    match format {
        Format::Rest => {
            event["resource"] = json!(path);
            event["path"] = json!(path);
            event["httpMethod"] = json!(method);
            event["requestContext"]["path"] = json!(format!("/prod{path}"));
            event["requestContext"]["resourcePath"] = json!(path);
            event["requestContext"]["httpMethod"] = json!(method);
        }
        Format::Http => {
            let route = format!("{method} {path}");
            event["rawPath"] = json!(path);
            event["routeKey"] = json!(route);
            event["requestContext"]["routeKey"] = json!(route);
            event["requestContext"]["http"]["path"] = json!(path);
            event["requestContext"]["http"]["method"] = json!(method);
        }
    }
    event["body"] = body.map_or(Value::Null, |b| json!(b));
    event
}

fn post(format: Format, path: &str, body: &str) -> Value {
    request(format, "POST", path, Some(body))
}

fn token_body() -> String {
    json!({"code": CODE, "code_verifier": VERIFIER, "redirect_uri": REDIRECT_URI}).to_string()
}

fn refresh_body() -> String {
    json!({ "refresh_token": REFRESH_TOKEN }).to_string()
}

/// The form the proxy must send for a token exchange, in order.
fn token_form(client_id: &str, client_secret: &str) -> Vec<String> {
    vec![
        "grant_type=authorization_code".into(),
        format!("client_id={client_id}"),
        format!("client_secret={client_secret}"),
        format!("code={CODE}"),
        format!("code_verifier={VERIFIER}"),
        format!("redirect_uri={REDIRECT_URI}"),
    ]
}

fn refresh_form() -> Vec<String> {
    vec![
        "grant_type=refresh_token".into(),
        format!("client_id={CLIENT_ID}"),
        format!("client_secret={CLIENT_SECRET}"),
        format!("refresh_token={REFRESH_TOKEN}"),
    ]
}

/// An API Gateway proxy response: status, the body as sent, and the headers (lower-case names;
/// REST answers use multiValueHeaders).
struct Answered {
    status: u16,
    body: String,
    headers: Value,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
            .to_owned()
    }

    #[track_caller]
    fn assert_cors(&self) {
        assert_eq!(self.headers["access-control-allow-origin"], ORIGIN);
        assert_eq!(self.headers["access-control-allow-credentials"], "true");
    }
}

fn answered(response: Value) -> Answered {
    let headers = proxy_headers(&response);
    Answered {
        status: response["statusCode"].as_u64().unwrap() as u16,
        body: response["body"].as_str().unwrap_or("").to_owned(),
        headers,
    }
}

/// The function with the client credentials in its environment, SSM at a closed port.
fn spawn(runtime: &RuntimeApi, token_url: &str, extra: &[(&str, &str)]) -> LambdaProcess {
    let mut env = vec![
        ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
        ("SOUNDCLOUD_CLIENT_SECRET", CLIENT_SECRET),
        ("SOUNDCLOUD_TOKEN_URL", token_url),
        ("SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS", "5"),
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    env.extend_from_slice(extra);
    spawn_function(&workspace_bin("xomcloud-auth-token"), runtime, &env)
}

async fn invoke(runtime: &RuntimeApi, event: Value) -> Answered {
    answered(runtime.invoke(event).await.response())
}

/// Fails when a credential reached the logs; returns them for further checks.
#[track_caller]
fn assert_clean_logs(lambda: &LambdaProcess) -> String {
    let logs = lambda.logs();
    for value in NEVER_LOGGED.iter().chain([&CLIENT_ID]) {
        assert!(!logs.contains(value), "{value} was logged:\n{logs}");
    }
    logs
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_sends_the_exact_form_and_passes_the_answer_through_verbatim() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    for format in [Format::Rest, Format::Http] {
        let r = invoke(&runtime, post(format, "/auth/token", &token_body())).await;
        assert_eq!(r.status, 200, "{format:?}: {}", r.body);
        assert_eq!(r.body, tokens_json(), "{format:?}");
        assert_eq!(r.headers["content-type"], "application/json");
        r.assert_cors();
        let received = soundcloud.take();
        assert_eq!(received.len(), 1, "{format:?}: {received:?}");
        let sent = &received[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.path, "/oauth/token");
        assert_eq!(
            sent.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(sent.accept.as_deref(), Some("application/json"));
        assert_eq!(sent.pairs(), token_form(CLIENT_ID, CLIENT_SECRET));
    }

    // Surrounding blanks are trimmed before they are sent.
    let padded = json!({"code": format!(" {CODE} "), "code_verifier": VERIFIER, "redirect_uri": REDIRECT_URI});
    let r = invoke(
        &runtime,
        post(Format::Rest, "/auth/token", &padded.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        soundcloud.take()[0].pairs(),
        token_form(CLIENT_ID, CLIENT_SECRET)
    );

    let logs = assert_clean_logs(&lambda);
    assert!(
        logs.contains("forwarding the token request to SoundCloud")
            && logs.contains("code_verifier"),
        "the form's field names are logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_is_chosen_by_the_path_in_every_event_format() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    // REST `path`, HTTP API `rawPath`, and a REST event that has only `requestContext.path`
    // (with the stage in front).
    let mut context_only = post(Format::Rest, "/auth/refresh", &refresh_body());
    context_only.as_object_mut().unwrap().remove("path");
    let events = [
        ("rest", post(Format::Rest, "/auth/refresh", &refresh_body())),
        ("http", post(Format::Http, "/auth/refresh", &refresh_body())),
        ("requestContext.path", context_only),
    ];
    for (name, event) in events {
        let r = invoke(&runtime, event).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.body, tokens_json(), "{name}");
        r.assert_cors();
        let received = soundcloud.take();
        assert_eq!(received.len(), 1, "{name}");
        assert_eq!(received[0].pairs(), refresh_form(), "{name}");
    }

    // A stage in the path itself (a custom domain's base path) still ends with /refresh.
    let r = invoke(
        &runtime,
        post(Format::Http, "/prod/auth/refresh", &refresh_body()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(soundcloud.take()[0].pairs(), refresh_form());

    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_operation_overrides_the_path() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    let refresh = json!({"operation": "refresh", "refresh_token": REFRESH_TOKEN}).to_string();
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", &refresh)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(soundcloud.take()[0].pairs(), refresh_form());

    let token = json!({"operation": "token", "code": CODE, "code_verifier": VERIFIER, "redirect_uri": REDIRECT_URI}).to_string();
    let r = invoke(&runtime, post(Format::Http, "/auth/refresh", &token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        soundcloud.take()[0].pairs(),
        token_form(CLIENT_ID, CLIENT_SECRET)
    );

    // An operation that is neither leaves the path's choice.
    let other = json!({"operation": "revoke", "refresh_token": REFRESH_TOKEN}).to_string();
    let r = invoke(&runtime, post(Format::Rest, "/auth/refresh", &other)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(soundcloud.take()[0].pairs(), refresh_form());

    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_missing_or_non_string_field_is_a_400_and_soundcloud_is_not_called() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    let complete = json!({"code": CODE, "code_verifier": VERIFIER, "redirect_uri": REDIRECT_URI});
    let mut cases: Vec<(&str, String, String)> = Vec::new();
    for field in ["code", "code_verifier", "redirect_uri"] {
        let missing = format!("Missing required field: {field}");
        let mut absent = complete.clone();
        absent.as_object_mut().unwrap().remove(field);
        cases.push(("/auth/token", absent.to_string(), missing.clone()));
        for blank in [json!(null), json!(""), json!("   ")] {
            let mut body = complete.clone();
            body[field] = blank;
            cases.push(("/auth/token", body.to_string(), missing.clone()));
        }
        for wrong in [json!(42), json!(["x"]), json!({"x": 1}), json!(true)] {
            let mut body = complete.clone();
            body[field] = wrong;
            cases.push((
                "/auth/token",
                body.to_string(),
                format!("Field '{field}' must be a string"),
            ));
        }
    }
    let refresh_missing = "Missing required field: refresh_token".to_owned();
    cases.extend([
        ("/auth/refresh", "{}".into(), refresh_missing.clone()),
        ("/auth/refresh", "".into(), refresh_missing.clone()),
        (
            "/auth/refresh",
            r#"{"refresh_token": ""}"#.into(),
            refresh_missing.clone(),
        ),
        (
            "/auth/refresh",
            r#"{"refresh_token": 7}"#.into(),
            "Field 'refresh_token' must be a string".into(),
        ),
        // A refresh token does not stand in for a code, nor the reverse.
        (
            "/auth/token",
            refresh_body(),
            "Missing required field: code".into(),
        ),
        ("/auth/refresh", token_body(), refresh_missing),
    ]);
    for (path, body, message) in &cases {
        for format in [Format::Rest, Format::Http] {
            let r = invoke(&runtime, post(format, path, body)).await;
            assert_eq!(r.status, 400, "{format:?} {path} {body}: {}", r.body);
            assert_eq!(r.error_code(), "VALIDATION_ERROR");
            assert_eq!(r.json()["error"]["message"], json!(message), "{body}");
            r.assert_cors();
        }
    }

    // Not JSON, and JSON that is not an object. The message does not quote the body.
    let not_json = format!(r#"{{"code": "{CODE}", "#);
    for body in [not_json.as_str(), "code=abc", r#"["code"]"#, r#""code""#] {
        let r = invoke(&runtime, post(Format::Rest, "/auth/token", body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert!(!r.body.contains(CODE), "{}", r.body);
    }

    assert!(soundcloud.take().is_empty(), "SoundCloud was called");
    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn soundcloud_statuses_and_bodies_pass_through() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, "{}")).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    let cases = [
        (200, tokens_json()),
        (
            400,
            r#"{"error":"invalid_request","error_description":"Missing code_verifier"}"#.into(),
        ),
        (
            401,
            r#"{"error":"invalid_grant","error_description":"Code expired"}"#.into(),
        ),
        (500, r#"{"error":"server_error"}"#.into()),
    ];
    for (status, body) in &cases {
        soundcloud.answer(Answer::json(*status, body));
        for format in [Format::Rest, Format::Http] {
            let r = invoke(&runtime, post(format, "/auth/token", &token_body())).await;
            assert_eq!(r.status, *status, "{format:?}: {}", r.body);
            assert_eq!(&r.body, body, "{format:?}");
            r.assert_cors();
            let received = soundcloud.take();
            assert_eq!(received.len(), 1);
            assert_eq!(received[0].pairs(), token_form(CLIENT_ID, CLIENT_SECRET));
        }
    }

    // The status and the OAuth error code are logged, nothing of the form.
    let logs = assert_clean_logs(&lambda);
    assert!(
        logs.contains("invalid_grant") && logs.contains("401"),
        "the upstream status and error are logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_secret_echoed_by_soundcloud_is_removed() {
    let echo = format!(
        r#"{{"access_token":"{ACCESS_TOKEN}","client_secret":"{CLIENT_SECRET}","expires_in":3599,"refresh_token":"{NEW_REFRESH_TOKEN}"}}"#
    );
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &echo)).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    let r = invoke(
        &runtime,
        post(Format::Rest, "/auth/refresh", &refresh_body()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(CLIENT_SECRET), "{}", r.body);
    assert!(!r.body.contains("client_secret"), "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"access_token": ACCESS_TOKEN, "expires_in": 3599, "refresh_token": NEW_REFRESH_TOKEN})
    );

    // An error answer that echoes it too.
    soundcloud.answer(Answer::json(
        401,
        &format!(r#"{{"error":"invalid_client","client_secret":"{CLIENT_SECRET}"}}"#),
    ));
    let r = invoke(&runtime, post(Format::Http, "/auth/token", &token_body())).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json(), json!({"error": "invalid_client"}));

    assert_eq!(soundcloud.take().len(), 2);
    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_json_answer_is_an_upstream_error_with_soundcloud_status() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, "{}")).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(&runtime, &soundcloud.url(), &[]);

    let cases = [
        (
            Answer::text(502, "text/html", "<html><body>Bad Gateway</body></html>"),
            502,
            "SoundCloud returned a non-JSON response",
        ),
        (
            Answer::text(200, "text/plain", &format!("access_token={ACCESS_TOKEN}")),
            200,
            "SoundCloud returned a non-JSON response",
        ),
        (
            Answer::json(200, r#"["not", "an", "object"]"#),
            200,
            "Unexpected upstream response shape",
        ),
        (
            Answer::json(400, r#""invalid_grant""#),
            400,
            "Unexpected upstream response shape",
        ),
    ];
    for (answer, status, message) in cases {
        soundcloud.answer(answer.clone());
        let r = invoke(&runtime, post(Format::Rest, "/auth/token", &token_body())).await;
        assert_eq!(r.status, status, "{answer:?}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({"error": {"code": "UPSTREAM_ERROR", "message": message}}),
            "{answer:?}"
        );
        r.assert_cors();
    }
    assert_eq!(soundcloud.take().len(), 4);
    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_soundcloud_is_a_504_within_the_timeout() {
    let soundcloud = FakeSoundCloud::start(Answer::Hang).await;
    let runtime = RuntimeApi::start().await;
    let lambda = spawn(
        &runtime,
        &soundcloud.url(),
        &[("SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS", "1")],
    );
    // Let it start, so the timing below is the request's alone.
    let r = invoke(
        &runtime,
        request(Format::Rest, "OPTIONS", "/auth/token", None),
    )
    .await;
    assert_eq!(r.status, 204);

    let started = Instant::now();
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", &token_body())).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"error": {"code": "UPSTREAM_TIMEOUT", "message": "SoundCloud did not respond in time"}})
    );
    r.assert_cors();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?} with a 1 s timeout"
    );
    assert_eq!(soundcloud.take().len(), 1, "the request reached SoundCloud");
    assert_clean_logs(&lambda);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_soundcloud_is_a_502() {
    let runtime = RuntimeApi::start().await;
    // Nothing listens on the discard port.
    let lambda = spawn(&runtime, "http://127.0.0.1:9/oauth/token", &[]);
    for format in [Format::Rest, Format::Http] {
        let r = invoke(&runtime, post(format, "/auth/refresh", &refresh_body())).await;
        assert_eq!(r.status, 502, "{format:?}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({"error": {"code": "UPSTREAM_ERROR", "message": "Failed to reach SoundCloud"}})
        );
        r.assert_cors();
    }
    let logs = assert_clean_logs(&lambda);
    assert!(logs.contains("unreachable"), "the cause is logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn options_answers_the_preflight() {
    let runtime = RuntimeApi::start().await;
    let _lambda = spawn(&runtime, "http://127.0.0.1:9/oauth/token", &[]);
    for format in [Format::Rest, Format::Http] {
        for path in ["/auth/token", "/auth/refresh"] {
            let r = invoke(&runtime, request(format, "OPTIONS", path, None)).await;
            assert_eq!(r.status, 204, "{format:?} {path}");
            assert!(r.body.is_empty(), "{}", r.body);
            r.assert_cors();
            assert_eq!(
                r.headers["access-control-allow-methods"],
                xomcloud_common::response::ALLOW_METHODS
            );
            assert!(r.headers["access-control-allow-headers"]
                .as_str()
                .unwrap()
                .contains("Content-Type"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_come_from_the_environment_then_ssm() {
    let moto = Moto::start();
    moto.put_secure("/stored/soundcloud/CLIENT_ID", "ssm-client-id")
        .await;
    moto.put_secure("/stored/soundcloud/CLIENT_SECRET", "ssm-client-secret")
        .await;
    moto.put_secure("/half/soundcloud/CLIENT_ID", "half-client-id")
        .await;
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let url = soundcloud.url();
    let ssm_env = moto.ssm_env();
    let function = |runtime: &RuntimeApi, prefix: &str, env_id: Option<&str>| {
        let mut env: Vec<(&str, &str)> = ssm_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("SOUNDCLOUD_TOKEN_URL", url.as_str()),
            ("SSM_PREFIX", prefix),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        if let Some(id) = env_id {
            env.push(("SOUNDCLOUD_CLIENT_ID", id));
        }
        spawn_function(&workspace_bin("xomcloud-auth-token"), runtime, &env)
    };

    // Both in SSM: they are what SoundCloud receives.
    let runtime = RuntimeApi::start().await;
    let lambda = function(&runtime, "/stored", None);
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", &token_body())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        soundcloud.take()[0].pairs(),
        token_form("ssm-client-id", "ssm-client-secret")
    );
    let logs = lambda.logs();
    assert!(!logs.contains("ssm-client-secret"), "{logs}");
    drop(lambda);

    // The environment comes first.
    let runtime = RuntimeApi::start().await;
    let _lambda = function(&runtime, "/stored", Some("env-client-id"));
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", &token_body())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        soundcloud.take()[0].pairs(),
        token_form("env-client-id", "ssm-client-secret")
    );

    // Nothing anywhere, or the secret missing: CONFIG_ERROR, and SoundCloud is not called.
    for (prefix, env_id) in [
        ("/unset", None),
        ("/half", None),
        ("/unset", Some("env-id")),
    ] {
        let runtime = RuntimeApi::start().await;
        let lambda = function(&runtime, prefix, env_id);
        let r = invoke(
            &runtime,
            post(Format::Http, "/auth/refresh", &refresh_body()),
        )
        .await;
        assert_eq!(r.status, 500, "{prefix} {env_id:?}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({"error": {"code": "CONFIG_ERROR", "message": "Auth proxy is not configured"}})
        );
        r.assert_cors();
        // The log says which setting is missing.
        let logs = assert_clean_logs(&lambda);
        assert!(logs.contains("SOUNDCLOUD_CLIENT_"), "{logs}");
    }
    assert!(soundcloud.take().is_empty(), "SoundCloud was called");

    // A body error is still a 400 when unconfigured.
    let runtime = RuntimeApi::start().await;
    let _lambda = function(&runtime, "/unset", None);
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", "{}")).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn ssm_failing_is_an_internal_error() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens_json())).await;
    let runtime = RuntimeApi::start().await;
    // No credentials in the environment; SSM at a closed port.
    let lambda = spawn_function(
        &workspace_bin("xomcloud-auth-token"),
        &runtime,
        &[
            ("SOUNDCLOUD_TOKEN_URL", soundcloud.url().as_str()),
            ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let r = invoke(&runtime, post(Format::Rest, "/auth/token", &token_body())).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"error": {"code": "INTERNAL_ERROR", "message": "An unexpected error occurred"}})
    );
    r.assert_cors();
    assert!(soundcloud.take().is_empty(), "SoundCloud was called");
    let logs = assert_clean_logs(&lambda);
    assert!(logs.contains("internal error"), "{logs}");
}
