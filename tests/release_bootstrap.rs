//! The release binaries started the way the container images start them: placed at
//! `${LAMBDA_RUNTIME_DIR}/bootstrap`, run with the image's environment (`_HANDLER` from CMD),
//! answering one real event through the Runtime API.

mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::runtime_api::{spawn_function, LambdaProcess, RuntimeApi};
use support::s3::S3Server;

/// `target/release/<name>`, built by `scripts/test.sh`.
fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .unwrap();
    let bin = target.join("release").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p xomcloud-authorizer -p xomcloud-download-tracks --bins` (scripts/test.sh does it)",
        bin.display()
    );
    bin
}

/// Lays the binary out as the image does and starts it like /lambda-entrypoint.sh would.
fn start_as_bootstrap(
    name: &str,
    runtime: &RuntimeApi,
    envs: &[(&str, &str)],
) -> (tempfile::TempDir, LambdaProcess) {
    // A hard link, not a copy: a copy's write descriptor, inherited by a child another test
    // forks at that moment, makes exec fail with ETXTBSY ("Text file busy"). The link lives
    // under target/, on the same file system as the release binary.
    let runtime_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bootstrap = runtime_dir.path().join("bootstrap");
    std::fs::hard_link(release_bin(name), &bootstrap)
        .unwrap_or_else(|e| panic!("cannot link {} as {}: {e}", name, bootstrap.display()));
    let dir = runtime_dir.path().to_str().unwrap().to_owned();
    let mut all: Vec<(&str, &str)> = vec![
        ("LAMBDA_RUNTIME_DIR", dir.as_str()),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("_HANDLER", "bootstrap"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
        ("SOUNDCLOUD_CLIENT_ID", "release-client-id"),
    ];
    all.extend_from_slice(envs);
    let process = spawn_function(&bootstrap, runtime, &all);
    (runtime_dir, process)
}

#[tokio::test(flavor = "multi_thread")]
async fn release_authorizer_answers_a_token_event() {
    let runtime = RuntimeApi::start().await;
    let (_dir, _lambda) = start_as_bootstrap(
        "xomcloud-authorizer",
        &runtime,
        &[("API_SECRET_KEY", "release-secret")],
    );
    let token = xomcloud_authorizer::jwt::mint("release-user", b"release-secret", 300).unwrap();
    let event = json!({
        "type": "TOKEN",
        "authorizationToken": format!("Bearer {token}"),
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/POST/download"
    });
    let answer = runtime.invoke(event).await.response();
    assert_eq!(answer["principalId"], "release-user");
    assert_eq!(
        answer["policyDocument"]["Statement"][0]["Resource"],
        "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/*/*"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn release_download_function_answers_a_download_event() {
    let s3 = S3Server::start().await;
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let stub = support::stub::stub_scdl();
    let mut env = s3.env();
    env.extend(support::stub::stub_env());
    let home = tmp.path().to_str().unwrap().to_owned();
    env.extend([
        ("SCDL_BIN".to_owned(), stub.to_str().unwrap().to_owned()),
        ("TMPDIR".to_owned(), home.clone()),
        // As Dockerfile.download sets them: /tmp is the only writable path on Lambda.
        ("HOME".to_owned(), home.clone()),
        ("XDG_CONFIG_HOME".to_owned(), format!("{home}/.config")),
        ("XDG_CACHE_HOME".to_owned(), format!("{home}/.cache")),
    ]);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_dir, _lambda) = start_as_bootstrap("xomcloud-download-tracks", &runtime, &refs);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/download/rest-v1.json");
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture)
            .unwrap()
            .replace("__PRINCIPAL__", "release"),
    )
    .unwrap();
    event["body"] = json!(json!({"tracks": [{"id": "1", "url": "https://soundcloud.com/a/ok-release", "title": "Release", "artist": "Build"}]}).to_string());
    let answer = runtime.invoke(event).await.response();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    let url = body["data"]["download_url"].as_str().unwrap();
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(
        archive.file_names().collect::<Vec<_>>(),
        ["Build - Release.mp3"]
    );
}
