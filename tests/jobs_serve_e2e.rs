//! Download jobs on one machine: `xomcloud serve` over real HTTP, jobs in SQLite on the
//! in-process queue, the scdl stub — including a crash of the server mid-job.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::serve::{eventually, serve, Caller};
use support::stub::{group_alive, logged_pgids, logged_urls};

const SECRET: &str = "jobs-serve-secret";
const LIMIT: Duration = Duration::from_secs(60);

fn track(i: usize, slug: &str) -> Value {
    json!({"id": format!("t{i}"), "url": format!("https://soundcloud.com/stub/{slug}-{i}"),
           "title": format!("Song {i}"), "artist": "Stub"})
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
    let alice = Caller::new(&server, "alice", SECRET);

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
    let names = support::zips::names_at(done["download_url"].as_str().unwrap()).await;
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
    let bob = Caller::new(&server, "bob", SECRET);
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
    let alice = Caller::new(&server, "alice", SECRET);
    let done = alice.until(&id, "done").await;
    let names = support::zips::names_at(done["download_url"].as_str().unwrap()).await;
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
    let alice = Caller::new(&server, "alice", SECRET);

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
    assert_eq!(
        res.headers()["access-control-expose-headers"],
        "Location,Retry-After,RateLimit,RateLimit-Policy"
    );

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
    // No track of a cancelled job reads as still coming.
    let states: Vec<&str> = body["data"]["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cancelled"; 3], "{body}");

    // Its tracks' cache leases were given back: a new job asking for one of them fetches it at
    // once, rather than waiting out the lease (2 × 60 s + 65 s here, past LIMIT).
    let before = logged_urls(&log).len();
    let (status, body, _) = alice.post(&tracks[..1], None).await;
    assert_eq!(status, 202, "{body}");
    let again = body["data"]["job_id"].as_str().unwrap().to_owned();
    eventually(LIMIT, "the track fetched by the new job", || async {
        (logged_urls(&log).len() > before).then_some(())
    })
    .await;
    assert_eq!(
        logged_urls(&log)[before],
        tracks[0]["url"].as_str().unwrap()
    );
    assert_eq!(alice.delete(&again).await.0, 202);
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

/// `"per-caller";r={r};t={t}` → (r, t).
fn budget(headers: &reqwest::header::HeaderMap) -> (u64, u64) {
    let value = header(headers, "ratelimit");
    let rest = value
        .strip_prefix("\"per-caller\";r=")
        .unwrap_or_else(|| panic!("RateLimit: {value}"));
    let (r, t) = rest.split_once(";t=").unwrap();
    (r.parse().unwrap(), t.parse().unwrap())
}

/// `r` tokens left of 3 at one a minute: the bucket is full again within the (3 - r) minutes
/// used, and more than (2 - r) of them (the test takes far less than a minute).
fn assert_budget(headers: &reqwest::header::HeaderMap, r: u64) {
    let (remaining, reset) = budget(headers);
    assert_eq!(remaining, r);
    assert!(
        reset > 60 * (2 - r) && reset <= 60 * (3 - r),
        "t={reset} with r={r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_from_one_caller_is_refused_and_the_same_principal_elsewhere_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // One a minute, three at once: nothing refills while the test runs.
    let envs = [
        ("RATE_LIMIT_PER_MINUTE", "1"),
        ("RATE_LIMIT_BURST", "3"),
        ("SCDL_STUB_DELAY", "0"),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let here = Caller::from_address(&server, "front-end", SECRET, "127.0.0.1");
    let elsewhere = Caller::from_address(&server, "front-end", SECRET, "127.0.0.2");
    let policy = "\"per-caller\";q=1;w=60";

    // Downloads and jobs draw from one bucket; every answer shows what is left.
    let (status, body, headers) = here.download(&[track(1, "ok")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "ratelimit-policy"), policy);
    assert_budget(&headers, 2);
    let (status, _, headers) = here.download(&[track(2, "ok")]).await;
    assert_eq!(status, 200);
    assert_budget(&headers, 1);
    let (status, body, headers) = here.post(&[track(3, "ok")], None).await;
    assert_eq!(status, 202, "{body}");
    assert_budget(&headers, 0);
    assert_eq!(header(&headers, "ratelimit-policy"), policy);

    // Over the limit: 429 in the envelope, when to retry, the fields, CORS exposing them.
    for (status, body, headers) in [
        here.download(&[track(4, "ok")]).await,
        here.post(&[track(5, "ok")], None).await,
    ] {
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1 a minute"));
        let retry_after: u64 = header(&headers, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let (remaining, reset) = budget(&headers);
        assert_eq!(remaining, 0);
        assert!(reset >= retry_after && reset <= 180, "{reset}");
        assert_eq!(header(&headers, "ratelimit-policy"), policy);
        let exposed = header(&headers, "access-control-expose-headers");
        for name in ["Retry-After", "RateLimit", "RateLimit-Policy"] {
            assert!(exposed.split(',').any(|h| h == name), "{exposed}");
        }
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            "https://xomcloud.xomware.com"
        );
    }
    // A bad request is still told what is wrong (it takes no token).
    let bad = json!({"id": "1", "url": "https://evil.example/a"});
    let (status, body, _) = here.post(&[bad], None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("VALIDATION_ERROR"))
    );

    // The same principal from another address is another caller, with its whole burst.
    let (status, body, headers) = elsewhere.download(&[track(6, "ok")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        budget(&headers),
        (2, 60),
        "a fresh bucket is full again one interval later"
    );
    let (status, _, _) = elsewhere.post(&[track(7, "ok")], None).await;
    assert_eq!(status, 202);

    // Neither address nor token reaches the logs.
    let logs = server.output();
    assert!(!logs.contains("127.0.0.2"), "{logs}");
    assert!(!logs.contains(here.auth().trim_start_matches("Bearer ")));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_jobs_from_one_caller_leave_three_active() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_DELAY", "30"),
        ("TRACK_TIMEOUT_SECONDS", "60"),
        ("RATE_LIMIT_PER_MINUTE", "600"),
        ("RATE_LIMIT_BURST", "100"),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let here = Caller::from_address(&server, "front-end", SECRET, "127.0.0.1");
    let elsewhere = Caller::from_address(&server, "front-end", SECRET, "127.0.0.2");

    let bodies: Vec<Vec<Value>> = (0..20).map(|i| vec![track(i, "bench")]).collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| here.post(b, None))).await;
    let admitted: Vec<String> = answers
        .iter()
        .filter(|(status, _, _)| *status == 202)
        .map(|(_, body, _)| body["data"]["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        admitted.len(),
        3,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for (status, body, headers) in answers.iter().filter(|(status, _, _)| *status != 202) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 3"),
            "{body}"
        );
        assert_eq!(header(headers, "retry-after"), "10");
        assert!(budget(headers).0 < 100);
    }
    // Another address: its own three.
    assert_eq!(elsewhere.post(&[track(50, "bench")], None).await.0, 202);
    // A cancelled job frees its place, once.
    assert_eq!(here.delete(&admitted[0]).await.0, 202);
    assert_eq!(here.delete(&admitted[0]).await.0, 200);
    let (status, body, _) = here.post(&[track(60, "bench")], None).await;
    assert_eq!(status, 202, "{body}");
    let again = here.post(&[track(61, "bench")], None).await;
    assert_eq!(again.0, 429, "{}", again.1);
    for id in admitted[1..]
        .iter()
        .chain([body["data"]["job_id"].as_str().unwrap().to_owned()].iter())
    {
        here.delete(id).await;
    }
}

/// The shared track cache in `serve`: under `$XOMCLOUD_DATA_DIR/.cache/tracks/`, keyed by the
/// track's URL (never the client's id); repeats and concurrent asks fetch once, a failure is
/// not cached, and a done track's own link serves its MP3 under its zip entry's name.
#[tokio::test(flavor = "multi_thread")]
async fn the_shared_track_cache_serves_repeats_once_and_names_each_track() {
    use xomcloud_download_tracks::jobs::cache::{cache_key, cache_object};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let tmp = tempfile::tempdir().unwrap();
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_SIZE", "50000"),
        ("SCDL_STUB_DELAY", "0.5"),
        ("DOWNLOAD_CONCURRENCY", "2"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("TRACK_RETRY_PAUSE_SECONDS", "0"),
        ("TMPDIR", tmp.path().to_str().unwrap()),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Caller::new(&server, "alice", SECRET);
    let url = |slug: &str| format!("https://soundcloud.com/stub/{slug}");
    let in_cache = |slug: &str| {
        dir.path()
            .join("data")
            .join(cache_object(&cache_key(&url(slug))))
    };
    let runs_of = |slug: &str| {
        let u = url(slug);
        logged_urls(&log).iter().filter(|r| **r == u).count()
    };
    let run = |tracks: Vec<Value>| {
        let alice = &alice;
        async move {
            let (status, body, _) = alice.post(&tracks, None).await;
            assert_eq!(status, 202, "{body}");
            let id = body["data"]["job_id"].as_str().unwrap().to_owned();
            alice.until(&id, "done").await
        }
    };

    let unicode =
        json!({"id": "t0", "url": url("bench-0"), "title": "Ünïcode 0", "artist": "Stub"});
    let first = run(vec![unicode, track(1, "bench"), track(2, "notfound")]).await;
    let zip_a = support::zips::entries_at(first["download_url"].as_str().unwrap()).await;
    assert!(in_cache("bench-0").is_file() && in_cache("bench-1").is_file());
    assert!(
        !in_cache("notfound-2").exists(),
        "a failed track is not cached"
    );

    // A done track's own link: its bytes, audio/mpeg, named as in the zip (RFC 5987 UTF-8).
    let link = first["tracks"][0]["url"]
        .as_str()
        .expect("a done track's url");
    assert!(first["tracks"][2].get("url").is_none());
    let response = reqwest::get(link).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"Stub - _n_code 0.mp3\"; \
         filename*=UTF-8''Stub%20-%20%C3%9Cn%C3%AFcode%200.mp3"
    );
    assert_eq!(zip_a[0].0, "Stub - Ünïcode 0.mp3");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        zip_a[0].1.as_slice()
    );
    // The name is signed with the link.
    let renamed = link.replace("name=Stub", "name=Evil");
    assert_eq!(reqwest::get(&renamed).await.unwrap().status(), 403);

    // The same tracks again under other names, beside a new one: only the new one is fetched.
    let other = |i: usize| {
        json!({"id": format!("x{i}"), "url": url(&format!("bench-{i}")),
               "title": format!("Other {i}"), "artist": "Else"})
    };
    let second = run(vec![other(1), other(0), track(3, "bench")]).await;
    let zip_b = support::zips::entries_at(second["download_url"].as_str().unwrap()).await;
    let names: Vec<&str> = zip_b.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Else - Other 1.mp3",
            "Else - Other 0.mp3",
            "Stub - Song 3.mp3"
        ]
    );
    assert_eq!(
        (zip_b[0].1.as_slice(), zip_b[1].1.as_slice()),
        (zip_a[1].1.as_slice(), zip_a[0].1.as_slice())
    );
    assert_eq!(
        (runs_of("bench-0"), runs_of("bench-1"), runs_of("bench-3")),
        (1, 1, 1)
    );

    // A job of cached tracks runs no scdl.
    let before = logged_urls(&log).len();
    run(vec![track(3, "bench"), track(1, "bench")]).await;
    assert_eq!(
        logged_urls(&log).len(),
        before,
        "cached tracks are not fetched"
    );

    // A forged id (track 0's, on another URL) reaches nothing of track 0's.
    let forged = json!({"id": "t0", "url": url("bench-7"), "title": "Song 0", "artist": "Stub"});
    let fourth = run(vec![forged]).await;
    let zip_d = support::zips::entries_at(fourth["download_url"].as_str().unwrap()).await;
    assert_eq!(runs_of("bench-7"), 1);
    assert_ne!(zip_d[0].1, zip_a[0].1, "its own audio");

    // Two jobs at once (their tracks two at a time across both) asking for the same uncached
    // track: fetched once.
    let (e, f) = tokio::join!(
        run(vec![track(9, "bench")]),
        run(vec![track(8, "bench"), track(9, "bench")])
    );
    let zip_e = support::zips::entries_at(e["download_url"].as_str().unwrap()).await;
    let zip_f = support::zips::entries_at(f["download_url"].as_str().unwrap()).await;
    assert_eq!(runs_of("bench-9"), 1, "one fetch for both jobs");
    assert_eq!(zip_e[0].1, zip_f[1].1);

    // Cleanup kept the cache; nothing per job or in the temp dir.
    for slug in [
        "bench-0", "bench-1", "bench-3", "bench-7", "bench-8", "bench-9",
    ] {
        assert!(in_cache(slug).is_file(), "{slug}");
    }
    let jobs_dir = dir.path().join("data/jobs");
    assert!(!jobs_dir.exists() || std::fs::read_dir(&jobs_dir).unwrap().next().is_none());
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "temp dir empty"
    );
}

/// serve runs the steps that reach SoundCloud `DOWNLOAD_CONCURRENCY` at a time across all jobs,
/// in queue order: with two slots and two jobs of three tracks, never more than two tracks are
/// downloading at once, and the second job's tracks start while the first job still runs (a
/// slot frees), not after it.
#[tokio::test(flavor = "multi_thread")]
async fn tracks_of_all_jobs_share_download_concurrency_in_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_SIZE", "20000"),
        ("SCDL_STUB_DELAY", "0.6"),
        ("DOWNLOAD_CONCURRENCY", "2"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Caller::new(&server, "alice", SECRET);
    let first: Vec<Value> = (0..3).map(|i| track(i, "bench")).collect();
    let second: Vec<Value> = (3..6).map(|i| track(i, "bench")).collect();
    let mut ids = Vec::new();
    for tracks in [&first, &second] {
        let (status, body, _) = alice.post(tracks, None).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["data"]["job_id"].as_str().unwrap().to_owned());
    }
    let mut most = 0;
    let mut overlapped = false;
    loop {
        let mut downloading = 0;
        let mut statuses = Vec::new();
        let mut started = Vec::new();
        for id in &ids {
            let (_, body) = alice.get(id).await;
            let d = &body["data"];
            statuses.push(d["status"].as_str().unwrap().to_owned());
            let states: Vec<&str> = d["tracks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["state"].as_str().unwrap())
                .collect();
            downloading += states.iter().filter(|s| **s == "downloading").count();
            started.push(states.iter().any(|s| *s != "queued"));
        }
        most = most.max(downloading);
        overlapped |= statuses[0] != "done" && started[1];
        if statuses.iter().all(|s| s == "done") {
            break;
        }
        assert!(
            statuses
                .iter()
                .all(|s| s == "queued" || s == "running" || s == "done"),
            "{statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(most <= 2, "{most} tracks downloading at once");
    assert!(most >= 1, "never saw a track downloading");
    assert!(
        overlapped,
        "the second job's tracks waited for the whole first job"
    );
    assert_eq!(logged_urls(&log).len(), 6);
}

/// With one slot a job's tracks are fetched one after another in the job's order (the page's
/// rows fill top to bottom): a step queued later never takes the slot before an earlier one.
#[tokio::test(flavor = "multi_thread")]
async fn with_one_slot_a_jobs_tracks_are_fetched_in_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scdl.log");
    let envs = [
        ("SCDL_STUB_LOG", log.to_str().unwrap()),
        ("SCDL_STUB_SIZE", "2000"),
        ("DOWNLOAD_CONCURRENCY", "1"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
    ];
    let server = serve(dir.path(), Some(SECRET), &envs);
    let alice = Caller::new(&server, "alice", SECRET);
    let tracks: Vec<Value> = (0..8).map(|i| track(i, "bench")).collect();
    let (status, body, _) = alice.post(&tracks, None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["job_id"].as_str().unwrap().to_owned();
    let done = eventually(LIMIT, "the job done", || async {
        let (_, body) = alice.get(&id).await;
        (body["data"]["status"] == "done").then_some(body)
    })
    .await;
    assert_eq!(done["data"]["done"], 8, "{done}");
    let expected: Vec<String> = (0..8)
        .map(|i| format!("https://soundcloud.com/stub/bench-{i}"))
        .collect();
    assert_eq!(logged_urls(&log), expected);
}
