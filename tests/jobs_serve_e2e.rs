//! Download jobs on one machine: `xomcloud serve` over real HTTP, jobs in SQLite on the
//! in-process queue, the scdl stub — including a crash of the server mid-job.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::serve::{eventually, serve, token, Server};
use support::stub::{group_alive, logged_pgids, logged_urls};

const SECRET: &str = "jobs-serve-secret";
const LIMIT: Duration = Duration::from_secs(60);

fn track(i: usize, slug: &str) -> Value {
    json!({"id": format!("t{i}"), "url": format!("https://soundcloud.com/stub/{slug}-{i}"),
           "title": format!("Song {i}"), "artist": "Stub"})
}

struct Client {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Client {
    fn new(server: &Server, sub: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.base.clone(),
            auth: format!("Bearer {}", token(sub, SECRET)),
        }
    }

    async fn post(
        &self,
        tracks: &[Value],
        key: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .post(format!("{}/jobs", self.base))
            .header("Authorization", &self.auth)
            .json(&json!({ "tracks": tracks }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let res = request.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.json().await.unwrap(), headers)
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}/jobs/{id}", self.base))
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn delete(&self, id: &str) -> (u16, Value) {
        let res = self
            .http
            .delete(format!("{}/jobs/{id}", self.base))
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// Polls until the job's status is `status`; its last view.
    async fn until(&self, id: &str, status: &str) -> Value {
        eventually(LIMIT, &format!("job {id} {status}"), || async {
            let (_, body) = self.get(id).await;
            (body["data"]["status"] == status).then_some(body["data"].clone())
        })
        .await
    }
}

async fn zip_names(url: &str) -> Vec<String> {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    support::zips::entries(&res.bytes().await.unwrap())
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_locally_and_survive_a_crash_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let tmp = tempfile::tempdir().unwrap();
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_SIZE", "50000"),
        ("SCDL_STUB_DELAY", "0.5"),
        ("DOWNLOAD_CONCURRENCY", "2"),
        ("TRACK_RETRY_PAUSE_SECONDS", "0"),
        ("TMPDIR", tmp.path().to_str().unwrap()),
    ];
    let mut server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Client::new(&server, "alice");

    // A job with two failing tracks: 202 with a Location, then done with exactly the others.
    let tracks: Vec<Value> = (0..6)
        .map(|i| match i {
            1 => track(i, "notfound"),
            4 => track(i, "geo"),
            _ => track(i, "bench"),
        })
        .collect();
    let (status, body, headers) = alice.post(&tracks, None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["job_id"].as_str().unwrap().to_owned();
    let location = format!("{}/jobs/{id}", server.base);
    assert_eq!(headers["location"], location.as_str());
    assert_eq!(body["data"]["status_url"], location.as_str());
    let done = alice.until(&id, "done").await;
    assert_eq!(
        (done["done"].clone(), done["failed_count"].clone()),
        (json!(4), json!(2))
    );
    assert_eq!(
        done["tracks"][1]["error"],
        "Track not found (deleted, private or a wrong URL)"
    );
    let names = zip_names(done["download_url"].as_str().unwrap()).await;
    assert_eq!(
        names,
        [
            "Stub - Song 0.mp3",
            "Stub - Song 2.mp3",
            "Stub - Song 3.mp3",
            "Stub - Song 5.mp3"
        ]
    );
    assert!(dir.path().join("data/jobs.db").is_file());

    // Another caller: 404; the same Idempotency-Key: the same job.
    let bob = Client::new(&server, "bob");
    assert_eq!(bob.get(&id).await.0, 404);
    let (_, first, _) = alice.post(&tracks[..1], Some("k-1")).await;
    let (_, again, _) = alice.post(&tracks[..1], Some("k-1")).await;
    assert_eq!(first["data"]["job_id"], again["data"]["job_id"]);
    alice
        .until(first["data"]["job_id"].as_str().unwrap(), "done")
        .await;

    // A crash mid-job: the job resumes when serve starts again, stored tracks are not fetched
    // again, and the zip is whole.
    let before = logged_urls(&log).len();
    let tracks: Vec<Value> = (10..18).map(|i| track(i, "bench")).collect();
    let (_, body, _) = alice.post(&tracks, None).await;
    let id = body["data"]["job_id"].as_str().unwrap().to_owned();
    let stored: Vec<String> = eventually(LIMIT, "two tracks done", || async {
        let (_, body) = alice.get(&id).await;
        let done: Vec<String> = body["data"]["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "done")
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        (done.len() >= 2).then_some(done)
    })
    .await;
    server.kill();
    let server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Client::new(&server, "alice");
    let done = alice.until(&id, "done").await;
    let names = zip_names(done["download_url"].as_str().unwrap()).await;
    let expected: Vec<String> = (10..18).map(|i| format!("Stub - Song {i}.mp3")).collect();
    assert_eq!(names, expected);
    let runs = logged_urls(&log)[before..].to_vec();
    for track_id in &stored {
        let url = format!("https://soundcloud.com/stub/bench-{}", &track_id[1..]);
        assert_eq!(
            runs.iter().filter(|u| **u == url).count(),
            1,
            "{url} fetched again"
        );
    }
    assert!(
        !dir.path().join("data/jobs").join(&id).exists(),
        "per-job tracks removed"
    );
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "temp dir empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_job_can_be_cancelled_and_bad_input_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_DELAY", "30"),
        ("TRACK_TIMEOUT_SECONDS", "60"),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Client::new(&server, "alice");

    // Preflight: DELETE and Idempotency-Key allowed, Location exposed.
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/jobs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        res.headers()["access-control-allow-methods"],
        "GET,POST,DELETE,OPTIONS"
    );
    assert!(res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert_eq!(res.headers()["access-control-expose-headers"], "Location");

    // Bad input: 4xx, nothing spawned.
    let too_many: Vec<Value> = (0..201).map(|i| track(i, "ok")).collect();
    assert_eq!(alice.post(&too_many, None).await.0, 400);
    assert_eq!(
        alice
            .post(&[track(0, "ok")], Some(&"k".repeat(129)))
            .await
            .0,
        400
    );
    assert_eq!(
        alice
            .post(
                &[json!({"id": "a b", "url": "https://soundcloud.com/x/y"})],
                None
            )
            .await
            .0,
        400
    );
    let res = reqwest::Client::new()
        .post(format!("{}/jobs", server.base))
        .json(&json!({"tracks": [track(0, "ok")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    for odd in ["nope", "..%2f..%2fetc", "0123456789abcdef0123456789abcdef"] {
        assert_eq!(alice.get(odd).await.0, 404, "{odd}");
    }
    assert!(logged_urls(&log).is_empty(), "bad input spawned scdl");

    // Cancel mid-job: running process groups die, the job reads cancelled.
    let tracks: Vec<Value> = (0..3).map(|i| track(i, "bench")).collect();
    let (_, body, _) = alice.post(&tracks, None).await;
    let id = body["data"]["job_id"].as_str().unwrap().to_owned();
    eventually(LIMIT, "scdl running", || async {
        (!logged_urls(&log).is_empty()).then_some(())
    })
    .await;
    let (status, body) = alice.delete(&id).await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (202, json!("cancelled")),
        "{body}"
    );
    let pgids = logged_pgids(&log);
    eventually(
        Duration::from_secs(10),
        "the stub's process groups gone",
        || async { (!pgids.iter().any(|pgid| group_alive(*pgid))).then_some(()) },
    )
    .await;
    assert_eq!(alice.delete(&id).await.0, 200);
    let (_, body) = alice.get(&id).await;
    assert_eq!(body["data"]["status"], "cancelled");
}
