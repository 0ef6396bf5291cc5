//! The OpenAPI document (`openapi.json`, served at `GET /openapi.json`) held to the code.
//!
//! - Every `ApiError` variant's code is documented with its status (a new variant does not compile
//!   here until it is listed, and then fails until the document has it).
//! - Schemathesis (pinned in `requirements-test.txt`) fuzzes every operation of `xomcloud serve`
//!   (the scdl stub, a valid token, a fake SoundCloud token endpoint) with the settings in
//!   `tests/schemathesis.toml`: no 5xx but the documented 502 of a `/download` whose every track
//!   failed, statuses, headers, content types and bodies as documented, and every body the
//!   document calls valid for `/download` and `/jobs` accepted. Real jobs (done, failed,
//!   running) and a real signed link are added as the examples of their operations, so the
//!   answers of each state are checked against the schemas, and the HAR report proves they were.
//!   Limits are on but out of reach; a second, short run with a one-request budget checks the
//!   429 answers (`RATE_LIMITED`, `Retry-After`, `RateLimit-Policy`, `RateLimit`).

mod fake_soundcloud;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fake_soundcloud::{Answer, FakeSoundCloud};
use serde_json::{json, Value};
use xomcloud_common::ApiError;

const SECRET: &str = "openapi-contract-secret";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
}

/// One value of every `ApiError` variant. The match has no wildcard: a new variant stops this
/// file compiling until it is listed here, and so checked against the document.
fn every_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::validation("x"),
        ApiError::Auth("x".into()),
        ApiError::Forbidden("x".into()),
        ApiError::NotFound("x".into()),
        ApiError::Conflict("x".into()),
        ApiError::RateLimited("x".into()),
        ApiError::Download {
            message: "x".into(),
            details: None,
        },
        ApiError::Upstream {
            status: 502,
            message: "x".into(),
        },
        ApiError::UpstreamTimeout("x".into()),
        ApiError::Config("x".into()),
        ApiError::internal("x"),
    ];
    for err in &all {
        match err {
            ApiError::Validation(_)
            | ApiError::Auth(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::RateLimited(_)
            | ApiError::Download { .. }
            | ApiError::Upstream { .. }
            | ApiError::UpstreamTimeout(_)
            | ApiError::Config(_)
            | ApiError::Internal(_) => {}
        }
    }
    all
}

/// Every documented `(status, error code)` pair: each error answer narrows `error.code` to the
/// codes it may carry (`allOf: [Error, {… code: const | enum}]`, maybe inside an `anyOf`).
fn documented_errors(doc: &Value) -> BTreeSet<(u16, String)> {
    let mut pairs = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("a path item").values() {
            let Some(responses) = operation["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let Ok(status) = status.parse::<u16>() else {
                    continue;
                };
                let response = lookup(doc, response);
                let schema = &response["content"]["application/json"]["schema"];
                // The envelope alone, or one of the alternatives (API Gateway's own answers).
                let alternatives = schema["anyOf"].as_array().into_iter().flatten();
                let envelopes = alternatives
                    .chain([schema])
                    .flat_map(|s| s["allOf"].as_array());
                for part in envelopes.flatten() {
                    let code = &part["properties"]["error"]["properties"]["code"];
                    let codes = code["enum"].as_array().cloned().unwrap_or_default();
                    for c in codes.iter().chain(code.get("const")) {
                        pairs.insert((status, c.as_str().expect("a code").to_owned()));
                    }
                }
            }
        }
    }
    pairs
}

/// `value`, or the component its `$ref` names.
fn lookup<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => doc
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{reference} is not in the document")),
        None => value,
    }
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let doc = document();
    let documented = documented_errors(&doc);
    let codes: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode's enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut statuses = BTreeMap::new();
    for err in every_error() {
        let pair = (err.status(), err.code().to_owned());
        assert!(
            codes.contains(err.code()),
            "{} is missing from ErrorCode",
            err.code()
        );
        assert!(
            documented.contains(&pair),
            "no answer documents {} with status {}",
            err.code(),
            err.status()
        );
        statuses.insert(err.code(), err.status());
    }
    assert_eq!(
        codes,
        statuses.keys().map(|c| c.to_string()).collect(),
        "ErrorCode lists exactly the codes of ApiError"
    );
    // An error answer documented with another status than the code's (UPSTREAM_ERROR carries
    // SoundCloud's status, so any).
    for (status, code) in &documented {
        if code != "UPSTREAM_ERROR" {
            assert_eq!(
                Some(status),
                statuses.get(code.as_str()),
                "{code} is documented with status {status}"
            );
        }
    }
}

#[test]
fn every_route_is_documented() {
    let doc = document();
    let operations: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods
                .filter(|m| *m != "parameters")
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let routes = [
        "POST /download",
        "POST /download/tracks",
        "POST /jobs",
        "GET /jobs/{id}",
        "DELETE /jobs/{id}",
        "GET /files/{key}",
        "POST /auth/token",
        "POST /auth/refresh",
        "GET /openapi.json",
    ];
    assert_eq!(operations, routes.iter().map(|r| r.to_string()).collect());
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
}

/// `.venv/bin/st` at the version `requirements-test.txt` pins; a clear failure otherwise.
fn schemathesis() -> PathBuf {
    let requirements = std::fs::read_to_string(root().join("requirements-test.txt"))
        .expect("requirements-test.txt");
    let pin = requirements
        .lines()
        .find_map(|l| l.trim().strip_prefix("schemathesis=="))
        .expect("requirements-test.txt pins schemathesis")
        .to_owned();
    let st = root().join(".venv/bin/st");
    let found = Command::new(&st)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match found {
        Some(version) if version.ends_with(&format!(" {pin}")) => st,
        found => panic!(
            "schemathesis {pin} is not installed in .venv (found: {found:?}): run scripts/setup.sh --test"
        ),
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// A job of one track whose stub behaviour `segment` names; its id.
    async fn create_job(&self, segment: &str) -> String {
        let body = json!({"tracks": [{"id": "1", "url": format!("https://soundcloud.com/contract/{segment}")}]});
        let res = self
            .client
            .post(format!("{}/jobs", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let created: Value = res.json().await.unwrap();
        created["data"]["job_id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        let res = self
            .client
            .get(format!("{}/jobs/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["data"].take()
    }

    /// The job once it has ended (`done`, `failed`).
    async fn ended(&self, id: &str) -> Value {
        support::serve::eventually(Duration::from_secs(60), "the job ends", || async {
            let job = self.job(id).await;
            matches!(job["status"].as_str(), Some("done" | "failed")).then_some(job)
        })
        .await
    }
}

/// The operations behind per-caller rate limits.
const LIMITED: [&str; 3] = ["POST /download", "POST /download/tracks", "POST /jobs"];

/// `METHOD /template` of a request to a documented route.
fn operation(method: &str, url: &str) -> String {
    let path = url::Url::parse(url).unwrap().path().to_owned();
    let template = if path.starts_with("/jobs/") {
        "/jobs/{id}"
    } else if path.starts_with("/files/") {
        "/files/{key}"
    } else {
        &path
    };
    format!("{method} {template}")
}

/// `xomcloud serve` with the scdl stub, a fake SoundCloud token endpoint, `limits`; a token.
async fn start(
    dir: &Path,
    limits: &[(&str, &str)],
) -> (support::serve::Server, FakeSoundCloud, Api) {
    let tokens = r#"{"access_token": "contract-access", "refresh_token": "contract-refresh", "expires_in": 3599, "scope": "", "token_type": "bearer"}"#;
    let soundcloud = FakeSoundCloud::start(Answer::json(200, tokens)).await;
    let token_url = soundcloud.url();
    let mut env = vec![
        ("SOUNDCLOUD_CLIENT_ID", "contract-client-id"),
        ("SOUNDCLOUD_CLIENT_SECRET", "contract-client-secret"),
        ("SOUNDCLOUD_TOKEN_URL", &token_url),
        ("TRACK_RETRY_PAUSE_SECONDS", "1"),
    ];
    env.extend_from_slice(limits);
    let server = support::serve::serve(dir, Some(SECRET), &env);
    let api = Api {
        client: reqwest::Client::new(),
        base: server.base.clone(),
        token: support::serve::token("contract", SECRET),
    };
    (server, soundcloud, api)
}

/// Runs schemathesis (`tests/schemathesis.toml` and `args`) on the document at `doc` against
/// `api`; asserts it found nothing. The statuses each documented operation answered, from its
/// HAR report, after checking each answer: no 5xx but the documented 502 of `/download`, the
/// RateLimit fields on every admitted or refused creation. And the report's entries.
async fn schemathesis_run(
    api: &Api,
    doc: &Path,
    server: &support::serve::Server,
    args: &[&str],
) -> (BTreeMap<String, BTreeSet<u16>>, Vec<Value>) {
    let dir = doc.parent().unwrap();
    let har = dir.join("schemathesis.har");
    let mut cmd = Command::new(schemathesis());
    cmd.arg("--config-file")
        .arg(root().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(doc)
        .args(["--url", &api.base, "--no-color", "--report", "har"])
        .arg("--report-har-path")
        .arg(&har)
        .args(["-H", &format!("Authorization: Bearer {}", api.token)])
        .args(args)
        .current_dir(dir);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run schemathesis"))
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = report
        .lines()
        .skip_while(|l| !l.contains("WARNINGS") && !l.contains("SUMMARY"));
    eprintln!(
        "schemathesis {args:?} took {:?}:\n{}",
        started.elapsed(),
        summary.collect::<Vec<_>>().join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\nserve:\n{}",
        server.output()
    );
    assert!(!server.output().contains("panicked"), "{}", server.output());

    let har: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap().clone();
    let documented = document()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            let methods = methods.filter(|m| *m != "parameters");
            methods.map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect::<BTreeSet<_>>();
    let mut seen: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for entry in &entries {
        let method = entry["request"]["method"].as_str().unwrap();
        let op = operation(method, entry["request"]["url"].as_str().unwrap());
        let status = entry["response"]["status"].as_u64().unwrap() as u16;
        let header = |name: &str| {
            let headers = entry["response"]["headers"].as_array().unwrap();
            headers.iter().any(|h| h["name"].as_str() == Some(name))
        };
        if LIMITED.contains(&op.as_str()) && matches!(status, 200 | 202 | 429) {
            // Optional in the document (absent when limits are off); these runs have them on.
            assert!(
                header("ratelimit-policy") && header("ratelimit"),
                "{op} {status} without the RateLimit fields: {}",
                entry["response"]["headers"]
            );
        }
        if documented.contains(&op) {
            assert!(
                status < 500 || (status == 502 && op.starts_with("POST /download")),
                "{op} answered {status}"
            );
            seen.entry(op).or_default().insert(status);
        }
    }
    (seen, entries)
}

/// `res` is the error envelope with `status` and `code`.
async fn assert_envelope(res: reqwest::Response, status: u16, code: &str) {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// Every operation, fuzzed, with a job in each state and a real signed link as examples.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_api_as_documented() {
    schemathesis();
    let dir = tempfile::tempdir().unwrap();
    // Limits on (their fields are checked) but out of reach: every request gets its real answer.
    let limits = [
        ("RATE_LIMIT_PER_MINUTE", "6000"),
        ("RATE_LIMIT_BURST", "1000"),
        ("MAX_ACTIVE_JOBS_PER_CALLER", "1000"),
    ];
    let (server, _soundcloud, api) = start(dir.path(), &limits).await;

    // The document as served is the checked-in one, as JSON.
    let res = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let mut doc: Value = res.json().await.unwrap();
    assert_eq!(doc, document());

    // Requests axum's extractors used to refuse with plain text get the envelope: a body over
    // the server's cap, a key that is not UTF-8, a repeated or malformed `expires`.
    let big = vec![b' '; 3 * 1024 * 1024];
    // Its own client: the server answers before reading the body and closes the connection.
    let post = reqwest::Client::new().post(format!("{}/download", api.base));
    let res = post.bearer_auth(&api.token).body(big).send().await.unwrap();
    assert_envelope(res, 400, "VALIDATION_ERROR").await;
    for (path, status, code) in [
        ("/files/%FF?expires=1&signature=x", 404, "NOT_FOUND"),
        ("/files/a?expires=1&expires=2&signature=x", 403, "FORBIDDEN"),
        ("/files/a?expires=-1&signature=x", 403, "FORBIDDEN"),
    ] {
        let res = api.client.get(format!("{}{path}", api.base)).send();
        assert_envelope(res.await.unwrap(), status, code).await;
    }

    // A job in each state, and a real signed link, as the examples of their operations.
    let done = api.create_job("ok-contract").await;
    let failed = api.create_job("notfound-contract").await;
    let (done_job, failed_job) = (api.ended(&done).await, api.ended(&failed).await);
    assert_eq!(
        (&done_job["status"], &failed_job["status"]),
        (&json!("done"), &json!("failed"))
    );
    let running = api.create_job("hang-contract").await;
    doc["paths"]["/jobs/{id}"]["parameters"][0]["examples"] = json!({
        "done": {"value": done}, "failed": {"value": failed}, "running": {"value": running},
    });
    let link = url::Url::parse(done_job["download_url"].as_str().unwrap()).unwrap();
    let query: BTreeMap<_, _> = link.query_pairs().into_owned().collect();
    let file = &mut doc["paths"]["/files/{key}"]["get"]["parameters"];
    file[0]["example"] = json!(link.path().strip_prefix("/files/").unwrap());
    file[1]["example"] = json!(query["expires"].parse::<u64>().unwrap());
    file[2]["example"] = json!(query["signature"]);
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, doc.to_string()).unwrap();

    let (seen, entries) = schemathesis_run(&api, &doc_path, &server, &[]).await;
    let expected = [
        ("POST /download", &[200, 400, 401, 502][..]),
        ("POST /download/tracks", &[200, 400, 401, 502]),
        ("POST /jobs", &[202, 400, 401]),
        ("GET /jobs/{id}", &[200, 401, 404]),
        ("DELETE /jobs/{id}", &[202, 404, 409]),
        ("GET /files/{key}", &[200, 403]),
        ("POST /auth/token", &[200, 400]),
        ("POST /auth/refresh", &[200, 400]),
        ("GET /openapi.json", &[200]),
    ];
    for (op, statuses) in expected {
        let got = seen.get(op).cloned().unwrap_or_default();
        for status in statuses {
            assert!(got.contains(status), "{op}: no {status} among {got:?}");
        }
    }
    // The optional fields were there to check: a done job's link, a failed job's reason.
    let answered = |id: &str, field: &str| {
        entries.iter().any(|e| {
            let url = e["request"]["url"].as_str().unwrap_or_default();
            let text = e["response"]["content"]["text"]
                .as_str()
                .unwrap_or_default();
            url.ends_with(&format!("/jobs/{id}"))
                && serde_json::from_str::<Value>(text).is_ok_and(|v| !v["data"][field].is_null())
        })
    };
    assert!(answered(&done, "download_url"), "no GET of the done job");
    assert!(answered(&failed, "error"), "no GET of the failed job");
    let partial = entries.iter().any(|e| {
        let text = e["response"]["content"]["text"].as_str();
        let body = serde_json::from_str::<Value>(text.unwrap_or_default());
        body.is_ok_and(|v| {
            v["data"]["failed"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        })
    });
    assert!(
        partial,
        "no download with a failed track among its successes"
    );
}

/// The 429s of the rate limits, against the document: one token, never refilled within the
/// run, and one active job; the creations' examples only.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_answers_are_as_documented() {
    schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        ("RATE_LIMIT_PER_MINUTE", "1"),
        ("RATE_LIMIT_BURST", "1"),
        ("MAX_ACTIVE_JOBS_PER_CALLER", "1"),
    ];
    let (server, _soundcloud, api) = start(dir.path(), &limits).await;
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, include_str!("../openapi.json")).unwrap();
    // Its warning that most answers were 429s is the point here.
    let args = [
        "--phases",
        "examples",
        "--include-method",
        "POST",
        "--warnings",
        "off",
    ];
    let (seen, _) = schemathesis_run(&api, &doc_path, &server, &args).await;
    for op in LIMITED {
        let got = seen.get(op).cloned().unwrap_or_default();
        assert!(got.contains(&429), "{op}: no 429 among {got:?}");
    }
}
