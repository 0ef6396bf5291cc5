//! `xomcloud serve` answers `/auth/token` and `/auth/refresh` like the auth-token Lambda, with
//! no JWT asked for, against a fake SoundCloud token endpoint served by the test.

mod fake_soundcloud;
mod support;

use std::path::Path;

use fake_soundcloud::{Answer, FakeSoundCloud};
use serde_json::{json, Value};
use support::serve::Server;

const CLIENT_ID: &str = "serve-client-id-61ac";
const CLIENT_SECRET: &str = "serve-client-secret-0d9b3e";
const CODE: &str = "serve-auth-code-5e21";
const VERIFIER: &str = "serve-pkce-verifier-c48f";
const REDIRECT_URI: &str = "http://localhost:4200/callback";
const REFRESH_TOKEN: &str = "serve-refresh-tok-7a30";
const ACCESS_TOKEN: &str = "serve-access-tok-19bd";
const ORIGIN: &str = "http://localhost:4200";

/// `xomcloud serve` on a free port in a bare directory, local mode, with `env`.
fn serve(cwd: &Path, env: &[(&str, &str)]) -> Server {
    let mut all = vec![("CORS_ALLOW_ORIGIN", ORIGIN)];
    all.extend_from_slice(env);
    support::serve::serve(cwd, Some("serve-api-secret"), &all)
}

async fn post(
    server: &Server,
    path: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let res = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .header("Content-Type", "application/json")
        .header("Origin", ORIGIN)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn token_body() -> String {
    json!({"code": CODE, "code_verifier": VERIFIER, "redirect_uri": REDIRECT_URI}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_proxies_both_routes_without_a_token() {
    let tokens = format!(
        r#"{{"access_token": "{ACCESS_TOKEN}", "expires_in": 3599, "refresh_token": "{REFRESH_TOKEN}", "scope": ""}}"#
    );
    let soundcloud = FakeSoundCloud::start(Answer::json(200, &tokens)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = soundcloud.url();
    let server = serve(
        dir.path(),
        &[
            ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
            ("SOUNDCLOUD_CLIENT_SECRET", CLIENT_SECRET),
            ("SOUNDCLOUD_TOKEN_URL", &url),
        ],
    );

    // No Authorization header: the token exchange goes through.
    let (status, headers, body) = post(&server, "/auth/token", &token_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, tokens);
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let received = soundcloud.take();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].pairs(),
        [
            "grant_type=authorization_code".to_owned(),
            format!("client_id={CLIENT_ID}"),
            format!("client_secret={CLIENT_SECRET}"),
            format!("code={CODE}"),
            format!("code_verifier={VERIFIER}"),
            format!("redirect_uri={REDIRECT_URI}"),
        ]
    );

    // The refresh route, with SoundCloud refusing and echoing the secret.
    soundcloud.answer(Answer::json(
        400,
        &format!(r#"{{"error":"invalid_grant","client_secret":"{CLIENT_SECRET}"}}"#),
    ));
    let refresh = json!({ "refresh_token": REFRESH_TOKEN }).to_string();
    let (status, _, body) = post(&server, "/auth/refresh", &refresh).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body, r#"{"error":"invalid_grant"}"#);
    assert_eq!(
        soundcloud.take()[0].pairs(),
        [
            "grant_type=refresh_token".to_owned(),
            format!("client_id={CLIENT_ID}"),
            format!("client_secret={CLIENT_SECRET}"),
            format!("refresh_token={REFRESH_TOKEN}"),
        ]
    );

    // A missing field never reaches SoundCloud.
    let (status, _, body) = post(&server, "/auth/refresh", "{}").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"],
        json!({"code": "VALIDATION_ERROR", "message": "Missing required field: refresh_token"})
    );
    assert!(soundcloud.take().is_empty());

    // The preflight, and a method that is not POST.
    let client = reqwest::Client::new();
    let res = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/auth/token", server.base),
        )
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let res = client
        .get(format!("{}/auth/refresh", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let output = server.output();
    for value in [CLIENT_SECRET, CODE, VERIFIER, REFRESH_TOKEN, ACCESS_TOKEN] {
        assert!(!output.contains(value), "{value} was logged:\n{output}");
    }
    assert!(
        output.contains("forwarding the token request to SoundCloud"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_client_credentials_is_a_config_error() {
    let soundcloud = FakeSoundCloud::start(Answer::json(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let url = soundcloud.url();
    let server = serve(dir.path(), &[("SOUNDCLOUD_TOKEN_URL", &url)]);
    let (status, headers, body) = post(&server, "/auth/token", &token_body()).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"error": {"code": "CONFIG_ERROR", "message": "Auth proxy is not configured"}})
    );
    assert!(soundcloud.take().is_empty());
}
