//! The release binaries started the way the container images start them: placed at
//! `${LAMBDA_RUNTIME_DIR}/bootstrap`, run with the image's environment (`_HANDLER` from CMD),
//! answering real events through the Runtime API — with our own settings, and as drop-ins for
//! the functions the XOMCLOUD Terraform creates (its environment, its Python-era CMD override).

mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::moto::Moto;
use support::runtime_api::{spawn_function_with_args, LambdaProcess, RuntimeApi};
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

/// Lays the binary out as the image does and starts it like /lambda-entrypoint.sh would, with
/// the image's CMD (`handler`) as `_HANDLER` and as the argument.
fn start_as_image(
    name: &str,
    handler: &str,
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
        ("_HANDLER", handler),
    ];
    all.extend_from_slice(envs);
    let process = spawn_function_with_args(&bootstrap, &[handler], runtime, &all);
    (runtime_dir, process)
}

/// Our own images: CMD `bootstrap`, secrets from the environment.
fn start_as_bootstrap(
    name: &str,
    runtime: &RuntimeApi,
    envs: &[(&str, &str)],
) -> (tempfile::TempDir, LambdaProcess) {
    let mut all: Vec<(&str, &str)> = vec![
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
        ("SOUNDCLOUD_CLIENT_ID", "release-client-id"),
    ];
    all.extend_from_slice(envs);
    start_as_image(name, "bootstrap", runtime, &all)
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

// ---------------------------------------------------------------------------------------------
// Drop-in for the XOMCLOUD infrastructure: the functions Terraform creates keep the CMD override
// of the Python images and an environment of only these variables (terraform/locals.tf), and
// read their secrets from SSM under /xomcloud.

const TERRAFORM_ENV: [(&str, &str); 3] = [
    ("APP_NAME", "xomcloud"),
    ("AIOHTTP_ACTIVE", "true"),
    ("AWS_ACCOUNT_ID", "123456789012"),
];
const TERRAFORM_BUCKET: &str = "xomcloud-downloads";
const TERRAFORM_SECRET: &str = "terraform-ssm-secret-5d1e0c9b8a7f6e5d4c3b";
const TERRAFORM_CLIENT_ID: &str = "terraform-ssm-client-id-0a1b2c3d";

/// moto holding the secrets where the infrastructure keeps them (the default SSM prefix).
async fn terraform_ssm() -> Moto {
    let moto = Moto::start();
    moto.put_secure("/xomcloud/api/API_SECRET_KEY", TERRAFORM_SECRET)
        .await;
    moto.put_secure("/xomcloud/soundcloud/CLIENT_ID", TERRAFORM_CLIENT_ID)
        .await;
    moto
}

/// A header of a REST proxy answer.
fn header(answer: &Value, name: &str) -> String {
    support::runtime_api::proxy_headers(answer)[name]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The front end's static token: HS256 over `{"sub": …}` with no `exp` (as PyJWT mints it).
fn static_token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub }),
        &jsonwebtoken::EncodingKey::from_secret(TERRAFORM_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_made_authorizer_accepts_the_front_ends_static_token() {
    let moto = terraform_ssm().await;
    let runtime = RuntimeApi::start().await;
    let mut env: Vec<(String, String)> = moto.ssm_env();
    env.extend(TERRAFORM_ENV.map(|(k, v)| (k.to_owned(), v.to_owned())));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_dir, lambda) = start_as_image(
        "xomcloud-authorizer",
        "lambdas.authorizer.handler.handler",
        &runtime,
        &refs,
    );
    let arn = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/dev/POST/download/tracks";
    let token_event = |authorization: String| json!({"type": "TOKEN", "authorizationToken": authorization, "methodArn": arn});
    let answer = runtime
        .invoke(token_event(format!("Bearer {}", static_token("user-1"))))
        .await
        .response();
    assert_eq!(answer["principalId"], "user-1", "{}", lambda.logs());
    assert_eq!(
        answer["policyDocument"]["Statement"][0]["Resource"],
        "arn:aws:execute-api:us-east-1:123456789012:abcdef123/dev/*/*"
    );
    // Still denied: an expired token, a wrong secret.
    let now = xomcloud_authorizer::jwt::now();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "user-1", "exp": now - 60}),
        &jsonwebtoken::EncodingKey::from_secret(TERRAFORM_SECRET.as_bytes()),
    )
    .unwrap();
    let outcome = runtime
        .invoke(token_event(format!("Bearer {expired}")))
        .await;
    assert_eq!(outcome.error_message(), "Unauthorized");
    let forged = xomcloud_authorizer::jwt::mint("user-1", b"another-secret", 300).unwrap();
    let outcome = runtime
        .invoke(token_event(format!("Bearer {forged}")))
        .await;
    assert_eq!(outcome.error_message(), "Unauthorized");
    assert!(!lambda.logs().contains(TERRAFORM_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_made_download_function_serves_download_tracks_on_the_dev_stage() {
    let moto = terraform_ssm().await;
    let s3 = S3Server::start().await;
    s3.add_bucket(TERRAFORM_BUCKET);
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let stub_log = work.path().join("scdl.log");
    let home = work.path().to_str().unwrap().to_owned();
    let mut env: Vec<(String, String)> = TERRAFORM_ENV
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
    env.push(("S3_DOWNLOAD_BUCKET_NAME".into(), TERRAFORM_BUCKET.into()));
    // The image's own ENV (Dockerfile.download), /tmp moved into this test's temp dir.
    env.extend([
        ("HOME".to_owned(), home.clone()),
        ("XDG_CONFIG_HOME".to_owned(), format!("{home}/.config")),
        ("XDG_CACHE_HOME".to_owned(), format!("{home}/.cache")),
        ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()),
    ]);
    // Test-only: the local S3 and SSM, Lambda's credential variables, the scdl stub and ffmpeg.
    env.extend(
        s3.env()
            .into_iter()
            .filter(|(k, _)| k != "S3_DOWNLOAD_BUCKET_NAME"),
    );
    env.push(("AWS_ENDPOINT_URL_SSM".into(), moto.endpoint()));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    env.extend(support::stub::stub_env());
    env.extend([
        (
            "SCDL_BIN".to_owned(),
            support::stub::stub_scdl().to_str().unwrap().to_owned(),
        ),
        (
            "FFMPEG_BIN".to_owned(),
            support::media::ffmpeg().to_str().unwrap().to_owned(),
        ),
        (
            "SCDL_STUB_LOG".to_owned(),
            stub_log.to_str().unwrap().to_owned(),
        ),
        ("TMPDIR".to_owned(), tmp.path().to_str().unwrap().to_owned()),
    ]);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_dir, lambda) = start_as_image(
        "xomcloud-download-tracks",
        "lambdas.download_tracks.handler.handler",
        &runtime,
        &refs,
    );

    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/download/rest-v1.json");
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture)
            .unwrap()
            .replace("__PRINCIPAL__", "user-1"),
    )
    .unwrap();
    // The infrastructure's route on its `dev` stage.
    event["resource"] = json!("/download/tracks");
    event["path"] = json!("/download/tracks");
    event["requestContext"]["resourcePath"] = json!("/download/tracks");
    event["requestContext"]["path"] = json!("/dev/download/tracks");
    event["requestContext"]["stage"] = json!("dev");
    event["body"] = json!(json!({"tracks": [
        {"id": 11, "url": "https://soundcloud.com/a/ok-first", "title": "First", "artist": "Drop In"},
        {"id": "12", "url": "https://soundcloud.com/a/notfound-second", "title": "Second", "artist": "Drop In"}
    ]})
    .to_string());
    let answer = runtime.invoke(event.clone()).await.response();
    assert_eq!(answer["statusCode"], 200, "{answer}\n{}", lambda.logs());
    assert_eq!(
        header(&answer, "access-control-allow-origin"),
        "https://xomcloud.xomware.com",
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    let data = &body["data"];
    assert_eq!(
        (data["successful"].clone(), data["failed_count"].clone()),
        (json!(1), json!(1))
    );
    // No table to keep buckets in: per-caller limits are off, said once at start-up, and the
    // answer carries no budget (API Gateway's throttling is the only limit there).
    assert_eq!(header(&answer, "ratelimit"), "", "{answer}");
    assert!(
        lambda
            .logs()
            .contains("per-caller rate limits are off: no JOBS_TABLE"),
        "{}",
        lambda.logs()
    );
    let url = data["download_url"].as_str().unwrap();
    assert!(
        url.contains(&format!("/{TERRAFORM_BUCKET}/user-1/")),
        "the Terraform bucket, keyed by the principal: {url}"
    );
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(
        archive.file_names().collect::<Vec<_>>(),
        ["Drop In - First.mp3"]
    );
    // The client id came from SSM under the default prefix and reached scdl, not the logs.
    let runs = std::fs::read_to_string(&stub_log).unwrap();
    assert!(runs.contains(TERRAFORM_CLIENT_ID), "{runs}");
    assert!(!lambda.logs().contains(TERRAFORM_CLIENT_ID));

    // Jobs need JOBS_TABLE and JOBS_QUEUE_URL, which Terraform does not set (yet): a clear 404,
    // and nothing queued or spawned.
    let mut jobs = event.clone();
    jobs["path"] = json!("/jobs");
    jobs["resource"] = json!("/jobs");
    jobs["requestContext"]["path"] = json!("/dev/jobs");
    let answer = runtime.invoke(jobs).await.response();
    assert_eq!(answer["statusCode"], 404, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert_eq!(body["error"]["message"], "jobs are not configured");
    assert_eq!(std::fs::read_to_string(&stub_log).unwrap(), runs);

    // The preflight, where a Function URL would bring it to our code: the infrastructure's
    // header list.
    event["httpMethod"] = json!("OPTIONS");
    event["requestContext"]["httpMethod"] = json!("OPTIONS");
    event["body"] = Value::Null;
    let answer = runtime.invoke(event).await.response();
    assert_eq!(answer["statusCode"], 204, "{answer}");
    assert_eq!(
        header(&answer, "access-control-allow-headers"),
        "Authorization,Content-Type,X-Amz-Date,X-Amz-Security-Token,X-Api-Key,Origin,Accept,Access-Control-Allow-Origin,Accept-Language,Idempotency-Key"
    );
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "the request's temp dir is gone"
    );
}
