//! The root binary end to end: `serve` over real HTTP, `download`, `token` and `doctor`.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use xomcloud_common::presign::LinkSigner;

const SECRET: &str = "cli-test-secret";

use support::serve::{serve as serve_with, token, xomcloud, Server};

fn serve(cwd: &Path, secret: Option<&str>) -> Server {
    serve_with(cwd, secret, &[])
}

fn body(tracks: &[(&str, &str)]) -> String {
    let tracks: Vec<Value> = tracks
        .iter()
        .map(|(id, slug)| json!({"id": id, "url": format!("https://soundcloud.com/someone/{slug}"), "title": format!("Title {id}"), "artist": "Someone"}))
        .collect();
    json!({"tracks": tracks}).to_string()
}

/// `GET path` sent byte for byte over a plain TCP connection (no client-side normalisation):
/// the status and the JSON body.
fn raw_get(base: &str, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn zip_names(bytes: &[u8]) -> Vec<String> {
    support::zips::entries(bytes)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_checks_tokens_and_serves_signed_links() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), Some(SECRET));
    let client = reqwest::Client::new();
    let download = format!("{}/download", server.base);

    // No token, a bad one, one signed with another secret: 401 with the envelope.
    let bad_tokens = [
        None,
        Some("Bearer nope".to_owned()),
        Some(format!("Bearer {}", token("x", "other-secret"))),
    ];
    for auth in bad_tokens {
        let mut req = client.post(&download).body(body(&[("1", "ok-a")]));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "AUTH_ERROR");
    }

    // A valid token: the zip lands on disk under the principal, the link streams it.
    let res = client
        .post(&download)
        .header(
            "Authorization",
            format!("Bearer {}", token("tester", SECRET)),
        )
        .body(body(&[("1", "ok-a"), ("2", "notfound-b")]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["data"]["successful"], 1);
    assert_eq!(v["data"]["failed"][0]["id"], "2");
    let link = v["data"]["download_url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&format!("{}/files/tester/", server.base)),
        "{link}"
    );
    let res = client.get(&link).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"xomcloud-tracks.zip\""
    );
    assert_eq!(
        zip_names(&res.bytes().await.unwrap()),
        ["Someone - Title 1.mp3"]
    );

    // Tampered: 403. Validly signed but expired: 403 saying so.
    let tampered = format!(
        "{}{}",
        &link[..link.len() - 1],
        if link.ends_with('0') { '1' } else { '0' }
    );
    let res = client.get(&tampered).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let key = link
        .split("/files/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let past = 1_000_000;
    let expired = format!(
        "{}/files/{key}?expires={past}&signature={}",
        server.base,
        LinkSigner::new(SECRET.as_bytes()).sign(key, past)
    );
    let res = client.get(&expired).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["message"], "The link has expired");
    // A path that tries to leave the data dir is refused by the `/files` handler itself, even
    // validly signed. Raw requests: an HTTP client would normalise the `..` away first.
    std::fs::write(dir.path().join("secret"), "outside the data dir").unwrap();
    let signer = LinkSigner::new(SECRET.as_bytes());
    let far = 9_999_999_999;
    for (path, key) in [
        ("/files/..%2fsecret", "../secret"),
        ("/files/a/../../secret", "a/../../secret"),
        ("/files/..%2F..%2Fetc/passwd", "../../etc/passwd"),
    ] {
        let signature = signer.sign(key, far);
        let (status, v) = raw_get(
            &server.base,
            &format!("{path}?expires={far}&signature={signature}"),
        );
        assert_eq!(status, 404, "{path}: {v}");
        assert_eq!(v["error"]["code"], "NOT_FOUND", "{path}: {v}");
        assert_eq!(v["error"]["message"], "No such file", "{path}: {v}");
    }
    let (status, v) = raw_get(
        &server.base,
        &format!("/files/..%2f..%2fetc/passwd?expires={far}&signature=00"),
    );
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        v["error"]["message"], "The link signature is invalid",
        "{v}"
    );

    // Preflight: exactly the production CORS headers, no token needed.
    let res = client
        .request(reqwest::Method::OPTIONS, &download)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://xomcloud.xomware.com"
    );
    assert_eq!(
        h["access-control-allow-headers"],
        "Authorization,Content-Type,X-Amz-Date,X-Amz-Security-Token,X-Api-Key,Origin,Accept,Access-Control-Allow-Origin,Accept-Language,Idempotency-Key"
    );
    assert_eq!(h["access-control-allow-methods"], "GET,POST,DELETE,OPTIONS");

    // Bad input behind a good token: 400 envelope.
    let res = client
        .post(&download)
        .header(
            "Authorization",
            format!("Bearer {}", token("tester", SECRET)),
        )
        .body("{\"tracks\": [{\"id\": \"1\", \"url\": \"file:///etc/passwd\"}]}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// The real front end's token: HS256 over `{"sub": …}`, no `exp`.
fn static_token(sub: &str, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_the_front_ends_static_token_on_both_routes_unless_exp_is_required() {
    let client = reqwest::Client::new();
    let no_exp = format!("Bearer {}", static_token("front-end", SECRET));
    let with_exp = format!("Bearer {}", token("front-end", SECRET));
    for (require_exp, no_exp_status) in [("false", 200), ("true", 401)] {
        let dir = tempfile::tempdir().unwrap();
        let server = serve_with(
            dir.path(),
            Some(SECRET),
            &[("JWT_REQUIRE_EXP", require_exp)],
        );
        for route in ["/download", "/download/tracks"] {
            let url = format!("{}{route}", server.base);
            for (auth, expected) in [(&no_exp, no_exp_status), (&with_exp, 200)] {
                let res = client
                    .post(&url)
                    .header("Authorization", auth.as_str())
                    .body(body(&[("1", "ok-a")]))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let v: Value = res.json().await.unwrap();
                assert_eq!(
                    status, expected,
                    "JWT_REQUIRE_EXP={require_exp} {route}: {v}"
                );
                if expected == 200 {
                    assert_eq!(v["data"]["successful"], 1, "{v}");
                } else {
                    assert_eq!(v["error"]["code"], "AUTH_ERROR");
                }
            }
            let res = client
                .request(reqwest::Method::OPTIONS, &url)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 204, "{route}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_a_secret_prints_a_working_token_and_curl_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), None);
    let token_line = server
        .banner
        .iter()
        .find(|l| l.starts_with("token"))
        .expect("token line");
    let token = token_line.rsplit(' ').next().unwrap();
    assert!(server
        .banner
        .iter()
        .any(|l| l.starts_with("try: curl ") && l.contains(&server.base)));
    let res = reqwest::Client::new()
        .post(format!("{}/download", server.base))
        .header("Authorization", format!("Bearer {token}"))
        .body(body(&[("9", "ok-z")]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn download_writes_the_zip_and_fails_when_a_track_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = xomcloud(dir.path())
        .args([
            "download",
            "https://soundcloud.com/some-artist/ok-first-song",
            "https://soundcloud.com/x/ok-second",
            "-o",
            "mix.zip",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 of 2 tracks downloaded"), "{stdout}");
    let zip = std::fs::read(dir.path().join("mix.zip")).unwrap();
    let mut names = zip_names(&zip);
    names.sort();
    assert_eq!(
        names,
        ["some artist - ok first song.mp3", "x - ok second.mp3"]
    );

    let out = xomcloud(dir.path())
        .args([
            "download",
            "https://soundcloud.com/a/ok-one",
            "https://soundcloud.com/a/geo-two",
            "-o",
            "partial.zip",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Not available in your country"), "{stdout}");
    assert_eq!(
        zip_names(&std::fs::read(dir.path().join("partial.zip")).unwrap()).len(),
        1
    );

    let out = xomcloud(dir.path())
        .args(["download", "http://evil.example/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "one clear line: {stderr}");
    // Nothing but the two zips and no staging directories are left.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["mix.zip", "partial.zip"]);
}

#[test]
fn doctor_names_the_install_command_when_scdl_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = xomcloud(dir.path())
        .env("SCDL_BIN", "/nonexistent/scdl")
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("MISSING  scdl"), "{stdout}");
    assert!(stdout.contains("pip install scdl==3.0.9"), "{stdout}");

    let out = xomcloud(dir.path())
        .env("API_SECRET_KEY", "supersecretvalue")
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        !stdout.contains("supersecretvalue"),
        "secret shown: {stdout}"
    );
    assert!(stdout.contains("supe***ue"), "{stdout}");

    // A client id that is set but blank is a finding, not "(not set)".
    let out = xomcloud(dir.path())
        .env("SOUNDCLOUD_CLIENT_ID", " ")
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("PROBLEM  SOUNDCLOUD_CLIENT_ID is configured but unusable: SOUNDCLOUD_CLIENT_ID is empty"),
        "{stdout}"
    );
}
