//! End to end: the compiled `xomcloud-download-tracks` driven through the Lambda Runtime API with
//! API Gateway events, scdl replaced by a stub with scdl 3's CLI, S3 = s3s-fs with SigV4 on.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};
use support::bins::workspace_bin;
use support::runtime_api::{proxy_headers, spawn_function, LambdaProcess, RuntimeApi};
use support::s3::S3Server;

const CLIENT_ID: &str = "test-client-id-5f3a9c";

struct Harness {
    s3: S3Server,
    runtime: RuntimeApi,
    lambda: LambdaProcess,
    tmp: tempfile::TempDir,
    stub_log: PathBuf,
    pids: PathBuf,
}

async fn harness(extra: &[(&str, &str)]) -> Harness {
    let s3 = S3Server::start().await;
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap().keep();
    let stub_log = work.join("scdl.log");
    let pids = work.join("pids");
    let mut env: Vec<(String, String)> = s3.env();
    env.extend(support::stub::stub_env());
    let stub = support::stub::stub_scdl();
    for (k, v) in [
        ("SCDL_BIN", stub.to_str().unwrap()),
        ("SCDL_STUB_LOG", stub_log.to_str().unwrap()),
        ("SCDL_STUB_PIDS", pids.to_str().unwrap()),
        ("TMPDIR", tmp.path().to_str().unwrap()),
        ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
        // Credentials the Lambda holds and scdl must never see (AWS keys come from `s3.env()`).
        ("SOUNDCLOUD_CLIENT_SECRET", "test-client-secret-0b7e"),
        ("API_SECRET_KEY", "test-api-secret-9d2c"),
        ("TRACK_TIMEOUT_SECONDS", "3"),
        ("MAX_TRACKS", "12"),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .chain(extra)
    {
        env.push((k.to_string(), v.to_string()));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lambda = spawn_function(
        &workspace_bin("xomcloud-download-tracks"),
        &runtime,
        &env_refs,
    );
    Harness {
        s3,
        runtime,
        lambda,
        tmp,
        stub_log,
        pids,
    }
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/download")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture event carrying `body`, with the authorizer's principal filled in.
fn event(name: &str, body: &str, principal: &str, base64: bool) -> Value {
    let text = serde_json::to_string(&fixture(name))
        .unwrap()
        .replace("__PRINCIPAL__", principal);
    let mut event: Value = serde_json::from_str(&text).unwrap();
    if base64 {
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
        event["isBase64Encoded"] = json!(true);
    } else {
        event["body"] = json!(body);
    }
    event
}

fn track(id: &str, slug: &str, title: &str, artist: &str) -> Value {
    json!({"id": id, "url": format!("https://soundcloud.com/stub-artist/{slug}"), "title": title, "artist": artist})
}

/// statusCode, parsed body and headers (lower-case names; REST answers use multiValueHeaders)
/// of an API Gateway proxy response.
fn answer(response: Value) -> (u16, Value, Value) {
    let status = response["statusCode"].as_u64().unwrap() as u16;
    let body = response["body"].as_str().unwrap_or("");
    let parsed = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    };
    (status, parsed, proxy_headers(&response))
}

fn temp_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

fn is_mp3(bytes: &[u8]) -> bool {
    bytes.starts_with(b"ID3") || (bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
}

fn pid_alive(pid: i32) -> bool {
    // kill -0: does the process exist (and is it not a zombie we reaped)?
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failure_shape_is_reported_per_track_and_the_link_works() {
    let h = harness(&[]).await;
    let tracks = json!({"tracks": [
        track("1", "ok-one", "First Song", "Stub Artist"),
        track("2", "m4a-two", "Second: Song?", "Stub Artist"),
        track("3", "notfound-three", "Gone", "A"),
        track("4", "geo-four", "Blocked", "A"),
        track("5", "ratelimit-five", "Slow", "A"),
        track("6", "preview-six", "Go Plus", "A"),
        track("7", "crash-seven", "Crash", "A"),
        track("8", "empty-eight", "Nothing", "A"),
        track("9", "leak-nine", "Leaky", "A"),
        track("10", "hang-ten", "Forever", "A"),
        track("11", "ok-eleven", "First Song", "Stub Artist"),
    ], "username": "ignored-when-a-principal-exists"});
    let started = std::time::Instant::now();
    let outcome = h
        .runtime
        .invoke(event(
            "rest-v1.json",
            &tracks.to_string(),
            "alice_01",
            false,
        ))
        .await;
    let (status, body, headers) = answer(outcome.response());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://xomcloud.xomware.com"
    );
    let data = &body["data"];
    assert_eq!(data["total"], 11);
    assert_eq!(data["successful"], 3);
    assert_eq!(data["failed_count"], 8);
    assert_eq!(data["expires_in"], 3600);
    let downloaded: Vec<&str> = data["tracks_downloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(downloaded, ["1", "2", "11"]);
    let errors: Vec<(String, String)> = data["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let error_of = |id: &str| {
        errors
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.as_str())
            .unwrap()
    };
    assert_eq!(
        error_of("3"),
        "Track not found (deleted, private or a wrong URL)"
    );
    assert_eq!(error_of("4"), "Not available in your country");
    assert_eq!(error_of("5"), "Rate limited by SoundCloud; try again later");
    assert_eq!(
        error_of("6"),
        "Only a 30-second preview is available (SoundCloud Go+ track)"
    );
    assert!(
        error_of("7").starts_with("scdl exited with 1"),
        "{}",
        error_of("7")
    );
    assert_eq!(error_of("8"), "scdl finished without an audio file");
    assert!(!error_of("9").contains(CLIENT_ID), "{}", error_of("9"));
    assert_eq!(error_of("10"), "Timed out after 3 s");
    assert!(
        started.elapsed().as_secs() < 30,
        "the hung track held the batch"
    );

    // The zip behind the presigned URL: names, bytes, the m4a transcoded to MP3.
    let url = data["download_url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(
        url.contains("/alice_01/"),
        "key owner is the principal: {url}"
    );
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"xomcloud-tracks.zip\""
    );
    let entries = support::zips::entries(&response.bytes().await.unwrap());
    let mut names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Stub Artist - First Song (2).mp3",
            "Stub Artist - First Song.mp3",
            "Stub Artist - Second Song.mp3"
        ]
    );
    let sample = std::fs::read(support::media::sample_mp3()).unwrap();
    let first = entries
        .iter()
        .find(|(n, _)| n == "Stub Artist - First Song.mp3")
        .unwrap();
    assert_eq!(first.1, sample);
    let second = entries
        .iter()
        .find(|(n, _)| n == "Stub Artist - Second Song.mp3")
        .unwrap();
    assert!(
        is_mp3(&second.1) && !second.1.is_empty(),
        "m4a was transcoded to MP3"
    );

    // One signature character changed: S3 refuses.
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = url.to_owned();
    let c = if &url[at..at + 1] == "0" { "1" } else { "0" };
    tampered.replace_range(at..at + 1, c);
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);

    // Nothing left behind: temp dir empty, hung processes dead, no secret in logs.
    assert!(temp_is_empty(h.tmp.path()), "temp dir not empty");
    let pids = std::fs::read_to_string(&h.pids).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        assert!(!pid_alive(pid), "process {pid} outlived its timeout");
    }
    assert!(
        !pids.trim().is_empty(),
        "the hang stub recorded its children"
    );
    let logs = h.lambda.logs();
    assert!(!logs.contains(CLIENT_ID), "client id in logs");
    // JSON lines carrying the invocation's request id (the runtime's span).
    let finished = logs
        .lines()
        .find(|l| l.contains("download finished"))
        .expect("a summary line");
    let line: Value = serde_json::from_str(finished).unwrap();
    assert_eq!(line["level"], "INFO");
    assert!(line.to_string().contains("requestId"), "{line}");
    let calls = std::fs::read_to_string(&h.stub_log).unwrap();
    assert!(calls.contains("--client-id"), "{calls}");
    let runs: Vec<Value> = calls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 11, "{calls}");
    // No credential of the Lambda reached scdl (the stub lists the ones it saw).
    for run in &runs {
        assert_eq!(run["secret_env"], json!([]), "scdl saw credentials: {run}");
    }
    // Each scdl run had its own HOME/XDG dirs inside the request's temp dir (the recorded
    // environment, not argv, which holds the temp path anyway).
    let tmp = h.tmp.path().to_str().unwrap();
    let process_home = std::env::var("HOME").unwrap_or_default();
    for var in ["HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"] {
        let values: std::collections::HashSet<&str> = runs
            .iter()
            .map(|run| {
                run[var]
                    .as_str()
                    .unwrap_or_else(|| panic!("{var} unset: {run}"))
            })
            .collect();
        assert_eq!(
            values.len(),
            runs.len(),
            "{var} shared between runs: {calls}"
        );
        for value in values {
            assert!(value.starts_with(tmp), "{var}={value} outside {tmp}");
            assert_ne!(value, process_home, "{var} is the process's HOME");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_api_v2_base64_body_and_owner_from_the_lambda_authorizer() {
    let h = harness(&[]).await;
    let body = json!({"tracks": [track("77", "ok-x", "Song", "")], "username": null}).to_string();
    let outcome = h
        .runtime
        .invoke(event("http-v2.json", &body, "bob!@#", true))
        .await;
    let (status, body, _) = answer(outcome.response());
    assert_eq!(status, 200, "{body}");
    let url = body["data"]["download_url"].as_str().unwrap();
    assert!(url.contains("/bob/"), "{url}");
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        support::zips::entries(&zip)[0].0,
        "Unknown Artist - Song.mp3"
    );
    assert_eq!(h.s3.objects().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn function_url_without_authorizer_uses_the_username() {
    let h = harness(&[]).await;
    let body = json!({"tracks": [track("5", "ok-y", "", "")], "username": "carol"}).to_string();
    let outcome = h
        .runtime
        .invoke(event("function-url.json", &body, "", false))
        .await;
    let (status, body, _) = answer(outcome.response());
    assert_eq!(status, 200, "{body}");
    let url = body["data"]["download_url"].as_str().unwrap();
    assert!(url.contains("/carol/"), "{url}");
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        support::zips::entries(&zip)[0].0,
        "Unknown Artist - Track 1.mp3"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_400_and_spawn_nothing() {
    let h = harness(&[("MAX_TRACKS", "2")]).await;
    let too_many = json!({"tracks": [track("1", "ok-a", "a", "a"), track("2", "ok-b", "b", "b"), track("3", "ok-c", "c", "c")]});
    let hostile = |url: &str| json!({"tracks": [{"id": "1", "url": url}]}).to_string();
    let cases = [
        String::new(),
        "not json".to_owned(),
        "{}".to_owned(),
        json!({"tracks": []}).to_string(),
        json!({"tracks": "x"}).to_string(),
        json!({"tracks": [1]}).to_string(),
        too_many.to_string(),
        hostile("file:///etc/passwd"),
        hostile("http://169.254.169.254/"),
        hostile("https://soundcloud.com.evil.example/x"),
        hostile("-o/tmp/x"),
        format!("{{\"tracks\": [{{\"id\": \"1\", \"url\": \"https://soundcloud.com/a/b\", \"title\": \"{}\"}}]}}", "x".repeat(1024 * 1024)),
    ];
    for body in &cases {
        let outcome = h
            .runtime
            .invoke(event("rest-v1.json", body, "alice", false))
            .await;
        let (status, parsed, headers) = answer(outcome.response());
        assert_eq!(status, 400, "{}: {parsed}", &body[..body.len().min(80)]);
        assert_eq!(parsed["error"]["code"], "VALIDATION_ERROR");
        assert!(parsed["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://xomcloud.xomware.com"
        );
    }
    assert!(
        !h.stub_log.exists(),
        "scdl was spawned for a rejected request"
    );
    assert!(h.s3.objects().is_empty() && h.s3.pending_uploads().is_empty());
    assert!(temp_is_empty(h.tmp.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_failed_is_502_with_reasons_and_no_object() {
    let h = harness(&[]).await;
    let body =
        json!({"tracks": [track("1", "notfound-a", "A", "x"), track("2", "crash-b", "B", "x")]})
            .to_string();
    let outcome = h
        .runtime
        .invoke(event("rest-v1.json", &body, "alice", false))
        .await;
    let (status, parsed, _) = answer(outcome.response());
    assert_eq!(status, 502, "{parsed}");
    assert_eq!(parsed["error"]["code"], "DOWNLOAD_ERROR");
    assert_eq!(parsed["error"]["message"], "All 2 downloads failed");
    let details = parsed["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(
        details[0]["error"],
        "Track not found (deleted, private or a wrong URL)"
    );
    assert!(h.s3.objects().is_empty(), "{:?}", h.s3.objects());
    assert!(
        h.s3.pending_uploads().is_empty(),
        "upload not aborted: {:?}",
        h.s3.pending_uploads()
    );
    assert!(temp_is_empty(h.tmp.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_batch_streams_as_several_parts() {
    // 4 tracks × 3 MB = a 12 MB zip: parts of 5, 5 and 2 MB.
    let h = harness(&[("SCDL_STUB_SIZE", "3000000"), ("DOWNLOAD_CONCURRENCY", "2")]).await;
    let tracks: Vec<Value> = (1..=4)
        .map(|i| {
            track(
                &i.to_string(),
                &format!("bench-{i}"),
                &format!("T{i}"),
                "Big",
            )
        })
        .collect();
    let body = json!({"tracks": tracks}).to_string();
    let outcome = h
        .runtime
        .invoke(event("rest-v1.json", &body, "alice", false))
        .await;
    let (status, parsed, _) = answer(outcome.response());
    assert_eq!(status, 200, "{parsed}");
    let url = parsed["data"]["download_url"].as_str().unwrap();
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert!(zip.len() > 12_000_000);
    // Reading every entry to the end checks its CRC.
    let entries = support::zips::entries(&zip);
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|(_, d)| d.len() == 3_000_000));
    let parts = h.lambda.logs().matches("\"part uploaded\"").count();
    assert_eq!(parts, 3, "expected 3 multipart parts");
    assert!(temp_is_empty(h.tmp.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_answers_cors() {
    let h = harness(&[("CORS_ALLOW_ORIGIN", "http://localhost:4200")]).await;
    let mut e = event("rest-v1.json", "", "alice", false);
    e["httpMethod"] = json!("OPTIONS");
    e["requestContext"]["httpMethod"] = json!("OPTIONS");
    let (status, _, headers) = answer(h.runtime.invoke(e).await.response());
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:4200"
    );
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET,POST,DELETE,OPTIONS"
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "Authorization,Content-Type,X-Amz-Date,X-Amz-Security-Token,X-Api-Key,Origin,Accept,Access-Control-Allow-Origin,Accept-Language,Idempotency-Key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blank_client_id_is_an_error_in_the_logs_not_a_silent_fallback() {
    let h = harness(&[("SOUNDCLOUD_CLIENT_ID", " ")]).await;
    let body = json!({"tracks": [track("1", "ok-a", "A", "x")]}).to_string();
    let outcome = h
        .runtime
        .invoke(event("rest-v1.json", &body, "alice", false))
        .await;
    let (status, parsed, _) = answer(outcome.response());
    // The download still works (scdl generates an id), but the misconfiguration is an ERROR.
    assert_eq!(status, 200, "{parsed}");
    let calls = std::fs::read_to_string(&h.stub_log).unwrap();
    assert!(!calls.contains("--client-id"), "{calls}");
    let logs = h.lambda.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("client id is configured but unusable"))
        .unwrap_or_else(|| panic!("no error line: {logs}"));
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line.to_string().contains("SOUNDCLOUD_CLIENT_ID is empty"),
        "the cause is named: {line}"
    );
}
