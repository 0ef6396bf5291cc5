//! Download jobs on the Lambda path, end to end: the compiled HTTP function and the jobs worker
//! (the same binary, `_HANDLER=jobs-worker`) under Runtime API servers, moto serving DynamoDB and
//! SQS, s3s-fs as S3, the scdl stub. The test plays the event source mapping: it receives from
//! the moto queue, hands the worker a real SQS event, and deletes the message on success. The
//! rig is `support::jobs_lambda::Harness` (shared with `benches/fanout.rs`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::jobs_lambda::{track, Harness, ALICE, CLIENT_ID, TABLE, WORKER_TIME};
use support::runtime_api::LambdaProcess;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_with_progress_and_zips_exactly_its_successful_tracks() {
    let h = Harness::start(&[]).await;
    let tracks: Vec<Value> = (0..12)
        .map(|i| match i {
            4 => track(i, "notfound"),
            9 => track(i, "geo"),
            _ => track(i, "bench"),
        })
        .collect();
    let (status, body, headers) = h.post(&json!({ "tracks": tracks }), ALICE, None).await;
    assert_eq!(status, 202, "{body}");
    let data = &body["data"];
    let id = data["job_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(data["status"], "queued");
    assert_eq!(data["total"], 12);
    let status_url =
        format!("https://abcdef123.execute-api.us-east-1.amazonaws.com/prod/jobs/{id}");
    assert_eq!(data["status_url"], status_url.as_str());
    assert_eq!(headers["location"], status_url.as_str());
    assert_eq!(
        headers["access-control-expose-headers"],
        "Location,Retry-After,RateLimit,RateLimit-Policy"
    );

    let (status, queued) = h.get(&id, ALICE).await;
    assert_eq!(
        (status, queued["data"]["status"].clone()),
        (200, json!("queued"))
    );

    // The test plays the event source mappings while it polls: progress shows in between.
    let poll = async {
        let mut seen = Vec::new();
        loop {
            let (_, body) = h.get(&id, ALICE).await;
            let d = &body["data"];
            seen.push((
                d["status"].as_str().unwrap().to_owned(),
                d["settled"].as_u64().unwrap(),
            ));
            if d["status"] == "done" {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (delivered, seen) = tokio::join!(h.drain(WORKER_TIME), poll);
    assert_eq!(delivered, 1 + 12 + 1, "start, one step per track, assemble");
    assert!(
        !h.worker_logs().contains("message not processed"),
        "{}",
        h.worker_logs()
    );
    assert!(
        seen.iter()
            .any(|(s, n)| s == "running" && *n > 0 && *n < 12),
        "no progress seen between queued and done: {seen:?}"
    );

    let (_, body) = h.get(&id, ALICE).await;
    let d = &body["data"];
    assert_eq!(
        (
            d["done"].clone(),
            d["failed_count"].clone(),
            d["settled"].clone()
        ),
        (json!(10), json!(2), json!(12))
    );
    assert_eq!(d["expires_in"], 3600);
    let states: Vec<&str> = d["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "done").count(), 10);
    assert_eq!(
        d["tracks"][4]["error"],
        "Track not found (deleted, private or a wrong URL)"
    );
    assert_eq!(d["tracks"][9]["error"], "Not available in your country");
    assert!(d["tracks"][0].get("error").is_none());
    let entries = support::zips::entries_at(d["download_url"].as_str().unwrap()).await;
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<String> = (0..12)
        .filter(|i| *i != 4 && *i != 9)
        .map(|i| format!("Stub - Song {i}.mp3"))
        .collect();
    assert_eq!(names, expected);
    assert!(entries.iter().all(|(_, bytes)| bytes.len() == 100_000));
    // Each GET presigns again; the per-job objects are gone; nothing left in the temp dir.
    assert!(h.job_objects().is_empty(), "{:?}", h.job_objects());
    assert!(h.temp_is_empty());
    assert_eq!(
        h.scdl_runs().len(),
        12,
        "not found and geo-blocked are not retried"
    );
    // Redelivered messages of every step for a finished job change nothing: no fetch, no
    // second zip, the same answer.
    let (_, before) = h.get(&id, ALICE).await;
    let zips = || -> Vec<String> {
        h.s3.objects()
            .into_iter()
            .filter(|k| k.ends_with(".zip"))
            .collect()
    };
    let zips_before = zips();
    assert_eq!(zips_before.len(), 1);
    for (url, body) in [
        (&h.queue_url, json!({"job_id": id})),
        (
            &h.track_queue_url,
            json!({"job_id": id, "step": "track", "track": 3}),
        ),
        (
            &h.track_queue_url,
            json!({"job_id": id, "step": "track", "track": 4}),
        ),
        (&h.queue_url, json!({"job_id": id, "step": "assemble"})),
    ] {
        h.sqs
            .send_message()
            .queue_url(url)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    assert_eq!(h.drain(WORKER_TIME).await, 4);
    assert_eq!(h.scdl_runs().len(), 12);
    assert_eq!(zips(), zips_before);
    let (_, again) = h.get(&id, ALICE).await;
    let strip = |v: &Value| {
        let mut d = v["data"].clone();
        d.as_object_mut().unwrap().remove("download_url");
        for t in d["tracks"].as_array_mut().unwrap() {
            t.as_object_mut().unwrap().remove("url");
        }
        d
    };
    assert_eq!(strip(&again), strip(&before), "presigned links aside");
    // Another principal sees nothing; DELETE of a done job is a conflict.
    let (status, other) = h.get(&id, "mallory").await;
    assert_eq!(
        (status, other["error"]["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let (status, other) = h.delete(&id, "mallory").await;
    assert_eq!(status, 404, "{other}");
    let (status, conflict) = h.delete(&id, ALICE).await;
    assert_eq!(
        (status, conflict["error"]["code"].clone()),
        (409, json!("CONFLICT"))
    );
    assert!(!h.worker_logs().contains(CLIENT_ID));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_tracks_all_fail_is_failed_and_passing_failures_are_retried_once() {
    let h = Harness::start(&[]).await;
    let id = h
        .create(&[
            track(0, "notfound"),
            track(1, "ratelimit"),
            track(2, "preview"),
        ])
        .await;
    assert_eq!(h.drain(WORKER_TIME).await, 1 + 3 + 1);
    let (_, body) = h.get(&id, ALICE).await;
    let d = &body["data"];
    assert_eq!(d["status"], "failed", "{body}");
    assert_eq!(d["error"], "All 3 downloads failed");
    assert_eq!(
        d["tracks"][1]["error"],
        "Rate limited by SoundCloud; try again later"
    );
    assert_eq!(
        d["tracks"][2]["error"],
        "Only a 30-second preview is available (SoundCloud Go+ track)"
    );
    assert!(d.get("download_url").is_none());
    let runs = h.scdl_runs();
    let count = |slug: &str| runs.iter().filter(|u| u.contains(slug)).count();
    assert_eq!(
        (count("notfound"), count("ratelimit"), count("preview")),
        (1, 2, 1)
    );
    assert!(h.s3.objects().is_empty(), "{:?}", h.s3.objects());
    assert!(h.temp_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_and_a_redelivered_message_make_one_correct_zip() {
    let mut h = Harness::start(&[("SCDL_STUB_DELAY", "0.5")]).await;
    let tracks: Vec<Value> = (0..12).map(|i| track(i, "bench")).collect();
    let id = h.create(&tracks).await;
    let start = h.receive(&h.queue_url).await.unwrap();
    h.deliver(&start, &h.queue_url, &h.queue_arn, WORKER_TIME)
        .await;
    // Four track steps settle their tracks.
    for _ in 0..4 {
        let message = h.receive(&h.track_queue_url).await.unwrap();
        h.deliver(
            &message,
            &h.track_queue_url,
            &h.track_queue_arn,
            WORKER_TIME,
        )
        .await;
    }
    let done_before: Vec<usize> = h
        .states(&id)
        .await
        .iter()
        .enumerate()
        .filter(|(_, s)| *s == "done")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(done_before.len(), 4);
    // The fifth worker dies while it fetches: its invocation is never answered.
    let message = h.receive(&h.track_queue_url).await.unwrap();
    let event = h.sqs_event(&message, &h.track_queue_arn);
    let invocation = async {
        let runtime_invoke =
            h.worker_runtime
                .invoke_with_time_limit(event, WORKER_TIME, WORKER_TIME);
        let _ = tokio::time::timeout(Duration::from_secs(60), runtime_invoke).await;
    };
    let kill_while_fetching = async {
        loop {
            if let Some(i) = h.states(&id).await.iter().position(|s| s == "downloading") {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let killed = tokio::select! {
        () = invocation => panic!("the worker finished before it could be killed"),
        i = kill_while_fetching => i,
    };
    h.start_worker(&[]); // kills the old process first
                         // Redelivery: the message becomes visible again.
    h.sqs
        .change_message_visibility()
        .queue_url(&h.track_queue_url)
        .receipt_handle(message.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert_eq!(h.drain(WORKER_TIME).await, 8 + 1, "the rest, then assembly");
    let (_, body) = h.get(&id, ALICE).await;
    assert_eq!(
        body["data"]["status"],
        "done",
        "{body}\n{}",
        h.worker_logs()
    );
    let entries = support::zips::entries_at(body["data"]["download_url"].as_str().unwrap()).await;
    let names: Vec<String> = entries.into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = (0..12).map(|i| format!("Stub - Song {i}.mp3")).collect();
    assert_eq!(names, expected);
    // Settled tracks were not fetched again; the killed one was, once more.
    let runs = h.scdl_runs();
    let fetches = |n: usize| {
        let url = format!("https://soundcloud.com/stub/bench-{n}");
        runs.iter().filter(|u| **u == url).count()
    };
    assert!(!done_before.contains(&killed));
    for n in 0..12 {
        let expected = if n == killed { 2 } else { 1 };
        assert_eq!(fetches(n), expected, "track {n}");
    }
    assert_eq!(runs.len(), 13, "{runs:?}");
    let zips: Vec<String> =
        h.s3.objects()
            .into_iter()
            .filter(|k| k.ends_with(".zip"))
            .collect();
    assert_eq!(zips.len(), 1, "{zips:?}");
    assert!(h.job_objects().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_short_of_time_hands_the_track_back_and_it_completes() {
    let h = Harness::start(&[("TRACK_TIMEOUT_SECONDS", "2"), ("SCDL_STUB_DELAY", "1")]).await;
    let id = h.create(&[track(0, "bench"), track(1, "bench")]).await;
    let start = h.receive(&h.queue_url).await.unwrap();
    h.deliver(&start, &h.queue_url, &h.queue_arn, WORKER_TIME)
        .await;
    // 5 s left, 6 s needed to start a track (3 × the track timeout): the step puts its track
    // back on the queue and answers without a failure.
    let message = h.receive(&h.track_queue_url).await.unwrap();
    let answer = h
        .deliver(
            &message,
            &h.track_queue_url,
            &h.track_queue_arn,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(answer["batchItemFailures"], json!([]));
    assert!(h.worker_logs().contains("handing the track back"));
    assert!(h.scdl_runs().is_empty());
    assert_eq!(
        h.drain(WORKER_TIME).await,
        2 + 1,
        "both tracks, then assembly"
    );
    let (_, body) = h.get(&id, ALICE).await;
    assert_eq!(body["data"]["status"], "done", "{body}");
    let entries = support::zips::entries_at(body["data"]["download_url"].as_str().unwrap()).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(h.scdl_runs().len(), 2, "every track fetched exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_end_in_the_dead_letter_queue_and_fail_their_tracks_or_job() {
    let mut h = Harness::start(&[]).await;
    let id = h.create(&[track(0, "bench"), track(1, "bench")]).await;
    let start = h.receive(&h.queue_url).await.unwrap();
    let answer = h
        .deliver(&start, &h.queue_url, &h.queue_arn, WORKER_TIME)
        .await;
    assert_eq!(answer["batchItemFailures"], json!([]));
    // Then a worker whose S3 is unreachable: every track step fails.
    h.start_worker(&[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")]);
    let mut failures = 0;
    while let Some(message) = h.receive(&h.track_queue_url).await {
        let answer = h
            .deliver(
                &message,
                &h.track_queue_url,
                &h.track_queue_arn,
                WORKER_TIME,
            )
            .await;
        assert_eq!(
            answer["batchItemFailures"][0]["itemIdentifier"],
            json!(message.message_id())
        );
        failures += 1;
        assert!(failures <= 6, "maxReceiveCount is 3, for each of 2 tracks");
    }
    assert_eq!(failures, 6);
    let (_, body) = h.get(&id, ALICE).await;
    assert_eq!(body["data"]["status"], "running");
    // The dead-letter queue's mapping: each dead track is settled failed, with a reason; the
    // last one asks for assembly, and with nothing fetched the job fails.
    h.start_worker(&[]);
    let mut dead = 0;
    while let Some(message) = h.receive(&h.dlq_url).await {
        let answer = h
            .deliver(&message, &h.dlq_url, &h.dlq_arn, WORKER_TIME)
            .await;
        assert_eq!(answer["batchItemFailures"], json!([]));
        dead += 1;
    }
    assert_eq!(dead, 2);
    assert_eq!(h.drain(WORKER_TIME).await, 1, "the assemble step");
    let (_, body) = h.get(&id, ALICE).await;
    let d = &body["data"];
    assert_eq!(d["status"], "failed", "{body}");
    assert_eq!(d["error"], "All 2 downloads failed");
    for t in d["tracks"].as_array().unwrap() {
        assert!(
            t["error"].as_str().unwrap().contains("failed repeatedly"),
            "{t}"
        );
    }
    // A dead start step fails its job.
    let other = h.create(&[track(2, "bench")]).await;
    let start = h.receive(&h.queue_url).await.unwrap();
    h.sqs
        .send_message()
        .queue_url(&h.dlq_url)
        .message_body(start.body().unwrap())
        .send()
        .await
        .unwrap();
    h.settle(&start, &h.queue_url, &json!({"batchItemFailures": []}))
        .await;
    let message = h.receive(&h.dlq_url).await.unwrap();
    h.deliver(&message, &h.dlq_url, &h.dlq_arn, WORKER_TIME)
        .await;
    let (_, body) = h.get(&other, ALICE).await;
    assert_eq!(body["data"]["status"], "failed", "{body}");
    assert!(body["data"]["error"]
        .as_str()
        .unwrap()
        .contains("failed repeatedly"));
    assert!(h.job_objects().is_empty());
    assert!(h.temp_is_empty());
    assert!(h.scdl_runs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_kills_the_process_groups_aborts_uploads_and_cleans_up() {
    let h = Harness::start(&[("SCDL_STUB_DELAY", "30"), ("TRACK_TIMEOUT_SECONDS", "60")]).await;
    let tracks: Vec<Value> = (0..6).map(|i| track(i, "bench")).collect();
    let id = h.create(&tracks).await;
    let start = h.receive(&h.queue_url).await.unwrap();
    h.deliver(&start, &h.queue_url, &h.queue_arn, WORKER_TIME)
        .await;
    // Four track steps at once, in four worker processes.
    let _more = h.spawn_workers(3);
    let mut steps = Vec::new();
    while steps.len() < 4 {
        steps.extend(
            h.receive_up_to(&h.track_queue_url, 4 - steps.len(), 1)
                .await,
        );
    }
    // Room for 3 × the 60 s track timeout: the workers start their tracks.
    let time_limit = Duration::from_secs(600);
    let workers = futures::future::join_all(
        steps
            .iter()
            .map(|m| h.deliver(m, &h.track_queue_url, &h.track_queue_arn, time_limit)),
    );
    let cancel = async {
        // Wait for four scdl processes, then cancel.
        while h.stub_pgids().len() < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = h.delete(&id, ALICE).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["data"]["status"], "cancelled");
        Instant::now()
    };
    let (answers, cancelled_at) = tokio::join!(workers, cancel);
    // Seen at once, not when the stub's 30 s are over.
    assert!(cancelled_at.elapsed() < Duration::from_secs(20));
    for answer in answers {
        assert_eq!(
            answer["batchItemFailures"],
            json!([]),
            "{}",
            h.worker_logs()
        );
    }
    // The other two track steps see the cancelled job and start nothing.
    assert_eq!(h.drain(time_limit).await, 2);
    let pgids = h.stub_pgids();
    assert_eq!(
        pgids.len(),
        4,
        "no new track started after the cancellation"
    );
    for pgid in pgids {
        assert!(
            !support::stub::group_alive(pgid),
            "process group {pgid} survived the cancellation"
        );
    }
    assert!(h.s3.pending_uploads().is_empty());
    assert!(h.job_objects().is_empty());
    assert!(h.temp_is_empty());
    let (status, body) = h.get(&id, ALICE).await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (200, json!("cancelled"))
    );
    let (status, _) = h.delete(&id, ALICE).await;
    assert_eq!(status, 200, "cancelling a cancelled job answers 200");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_principals_and_bad_input() {
    let h = Harness::start(&[]).await;
    let body = json!({"tracks": [track(0, "bench")]});
    let (s1, first, _) = h.post(&body, ALICE, Some("order-42")).await;
    let (s2, second, _) = h.post(&body, ALICE, Some("order-42")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["data"]["job_id"], second["data"]["job_id"]);
    let (_, other, _) = h.post(&body, "bob", Some("order-42")).await;
    assert_ne!(
        other["data"]["job_id"], first["data"]["job_id"],
        "keys are per principal"
    );
    let items_before = h.items().await;

    // Bad input: 4xx with the envelope, nothing stored, nothing queued, nothing spawned.
    let too_many: Vec<Value> = (0..201).map(|i| track(i, "ok")).collect();
    let cases: Vec<(Value, Option<String>, &str)> = vec![
        (json!({ "tracks": too_many }), None, "at most 200 tracks"),
        (
            json!({"tracks": [{"id": "../etc", "url": "https://soundcloud.com/a/b"}]}),
            None,
            "tracks[0].id",
        ),
        (
            json!({"tracks": [{"id": "1", "url": "https://evil.example/a"}]}),
            None,
            "tracks[0].url",
        ),
        (json!({"tracks": []}), None, "must not be empty"),
        (body.clone(), Some("k".repeat(129)), "Idempotency-Key"),
        (body.clone(), Some("tab\tkey".into()), "Idempotency-Key"),
    ];
    for (payload, key, words) in cases {
        let (status, answer, _) = h.post(&payload, ALICE, key.as_deref()).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_ERROR");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
    }
    // No principal: 401.
    let mut anonymous = Harness::event("POST", "/jobs", Some(&body), "x");
    anonymous["requestContext"]["authorizer"] = json!({});
    let (status, answer, _) = h.call(anonymous).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("AUTH_ERROR"))
    );
    // Odd job ids: the same 404.
    for odd in [
        "abc",
        "ABCDEF0123456789ABCDEF0123456789",
        "0123456789abcdef0123456789abcdef0",
        "%2e%2e",
        "a/b",
    ] {
        let (status, answer) = h.get(odd, ALICE).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (404, json!("NOT_FOUND")),
            "{odd}"
        );
    }
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(h.get(unknown, ALICE).await.0, 404);
    assert_eq!(h.delete(unknown, ALICE).await.0, 404);
    assert_eq!(h.items().await, items_before, "bad input stored nothing");
    assert!(h.scdl_runs().is_empty(), "nothing was spawned");
    // Three accepted creations (one repeated): two messages.
    let mut queued = HashMap::new();
    while let Some(m) = h.receive(&h.queue_url).await {
        *queued.entry(m.body().unwrap().to_owned()).or_insert(0) += 1;
        h.sqs
            .delete_message()
            .queue_url(&h.queue_url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    assert_eq!(queued.len(), 2, "{queued:?}");
    let _ = &h.moto;
}

/// `event` as if sent from `ip` (REST: `requestContext.identity.sourceIp`).
fn from_ip(mut event: Value, ip: &str) -> Value {
    event["requestContext"]["identity"]["sourceIp"] = json!(ip);
    event["headers"]["X-Forwarded-For"] = json!(ip);
    event
}

/// An HTTP API (v2) `POST /jobs` from `ip` (`requestContext.http.sourceIp`) and `principal`.
fn http_api_post(body: &Value, principal: &str, ip: &str) -> Value {
    let text = include_str!("fixtures/download/http-v2.json").replace("__PRINCIPAL__", principal);
    let mut event: Value = serde_json::from_str(&text).unwrap();
    event["routeKey"] = json!("POST /jobs");
    event["rawPath"] = json!("/jobs");
    event["requestContext"]["routeKey"] = json!("POST /jobs");
    event["requestContext"]["http"]["path"] = json!("/jobs");
    event["requestContext"]["http"]["sourceIp"] = json!(ip);
    event["headers"]["x-forwarded-for"] = json!(ip);
    event["body"] = json!(body.to_string());
    event
}

/// `"per-caller";r={r};t={t}` → (r, t).
fn budget(headers: &Value) -> (u64, u64) {
    let value = headers["ratelimit"]
        .as_str()
        .unwrap_or_else(|| panic!("{headers}"));
    let rest = value
        .strip_prefix("\"per-caller\";r=")
        .unwrap_or_else(|| panic!("RateLimit: {value}"));
    let (r, t) = rest.split_once(";t=").unwrap();
    (r.parse().unwrap(), t.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_from_one_caller_is_refused_and_the_same_principal_elsewhere_is_not() {
    // One a minute, two at once: nothing refills while the test runs.
    let h = Harness::start(&[("RATE_LIMIT_PER_MINUTE", "1"), ("RATE_LIMIT_BURST", "2")]).await;
    let body = json!({"tracks": [track(0, "bench")]});
    let post = |ip: &str| {
        from_ip(
            Harness::event("POST", "/jobs", Some(&body), "front-end"),
            ip,
        )
    };
    let policy = "\"per-caller\";q=1;w=60";

    let (status, answer, headers) = h.call(post("203.0.113.7")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(headers["ratelimit-policy"], policy);
    assert_eq!(budget(&headers), (1, 60));
    let (status, _, headers) = h.call(post("203.0.113.7")).await;
    assert_eq!(status, 202);
    let (remaining, reset) = budget(&headers);
    assert!(remaining == 0 && reset > 60 && reset <= 120, "{headers}");

    // Over the limit: jobs and downloads alike, REST and HTTP API alike.
    let download = from_ip(
        Harness::event("POST", "/download", Some(&body), "front-end"),
        "203.0.113.7",
    );
    for event in [
        post("203.0.113.7"),
        download,
        http_api_post(&body, "front-end", "203.0.113.7"),
    ] {
        let (status, answer, headers) = h.call(event).await;
        assert_eq!(status, 429, "{answer}");
        assert_eq!(answer["error"]["code"], "RATE_LIMITED");
        let retry_after: u64 = headers["retry-after"].as_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{headers}");
        let (remaining, reset) = budget(&headers);
        assert!(
            remaining == 0 && reset >= retry_after && reset <= 120,
            "{headers}"
        );
        assert_eq!(headers["ratelimit-policy"], policy);
        let exposed = headers["access-control-expose-headers"].as_str().unwrap();
        for name in ["Retry-After", "RateLimit", "RateLimit-Policy"] {
            assert!(exposed.split(',').any(|h| h == name), "{exposed}");
        }
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://xomcloud.xomware.com"
        );
    }

    // The same principal from other addresses: other callers, each with its own burst.
    let (status, answer, headers) = h.call(post("198.51.100.20")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(budget(&headers), (1, 60));
    let (status, answer, headers) = h
        .call(http_api_post(&body, "front-end", "198.51.100.21"))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(budget(&headers), (1, 60));

    // The buckets are items under `caller#{hash}`: no address, no principal in the table.
    let items = h
        .dynamodb
        .scan()
        .table_name(TABLE)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let buckets: Vec<String> = items
        .iter()
        .filter(|i| i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("rate"))
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(buckets.len(), 3, "{buckets:?}");
    assert!(buckets.iter().all(|pk| pk.starts_with("caller#")));
    let dump = format!("{items:?}");
    assert!(!dump.contains("203.0.113.7") && !dump.contains("198.51.100"));
    let logs = h._http.logs();
    assert!(logs.contains("per-caller rate limits on"), "{logs}");
    assert!(
        !logs.contains("203.0.113.7") && !logs.contains("198.51.100"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_jobs_from_one_caller_leave_three_active() {
    // moto one request at a time: DynamoDB applies each conditional write atomically.
    let h = Harness::start(&[
        ("RATE_LIMIT_PER_MINUTE", "600"),
        ("RATE_LIMIT_BURST", "100"),
    ])
    .await;
    // Four function instances take the twenty requests at once.
    let _more: Vec<LambdaProcess> = (0..3).map(|_| h.spawn_http()).collect();
    let body = json!({"tracks": [track(0, "bench")]});
    let post = |ip: &str| {
        from_ip(
            Harness::event("POST", "/jobs", Some(&body), "front-end"),
            ip,
        )
    };

    let answers = futures::future::join_all((0..20).map(|_| h.call(post("203.0.113.7")))).await;
    let admitted: Vec<String> = answers
        .iter()
        .filter(|(status, _, _)| *status == 202)
        .map(|(_, body, _)| body["data"]["job_id"].as_str().unwrap().to_owned())
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(admitted.len(), 3, "{statuses:?}");
    for (status, answer, headers) in answers.iter().filter(|a| a.0 != 202) {
        assert_eq!(*status, 429, "{answer}");
        assert_eq!(answer["error"]["code"], "RATE_LIMITED");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3"));
        assert_eq!(headers["retry-after"], "10");
    }
    let active = || async {
        let items = h.dynamodb.scan().table_name(TABLE).send().await.unwrap();
        items
            .items
            .unwrap_or_default()
            .into_iter()
            .filter(|i| {
                i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("active")
            })
            .map(|i| i["active"].as_n().unwrap().clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(active().await, ["3"]);

    // Another address is another caller.
    assert_eq!(h.call(post("198.51.100.20")).await.0, 202);
    // Cancelling frees one place, once.
    assert_eq!(h.delete(&admitted[0], "front-end").await.0, 202);
    assert_eq!(h.delete(&admitted[0], "front-end").await.0, 200);
    let (status, answer, _) = h.call(post("203.0.113.7")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(h.call(post("203.0.113.7")).await.0, 429);
    let mut counts = active().await;
    counts.sort();
    assert_eq!(counts, ["1", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_link_expands_in_the_worker_into_its_tracks_in_order() {
    // The real pinned yt-dlp against the fake SoundCloud API (tests/resolve_e2e.rs has the
    // failure cases, through serve); the scdl stub fetches the tracks.
    use support::soundcloud_api::{set_track_slugs, SoundCloudApi};
    let mp3 = std::fs::read(support::media::sample_mp3()).unwrap();
    let api = SoundCloudApi::start(mp3, Vec::new(), 3).await;
    let work = tempfile::tempdir().unwrap();
    let mut env = api.scdl_env(&work.path().join("pids"));
    let yt_dlp = support::bins::tools_bin("yt-dlp");
    env.push(("YT_DLP_BIN".into(), yt_dlp.to_str().unwrap().into()));
    // Room for yt-dlp on a slow machine, and 3 × it under the worker's time (else it hands back).
    env.push(("TRACK_TIMEOUT_SECONDS".into(), "30".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let h = Harness::start(&refs).await;

    let set = json!({"url": "https://soundcloud.com/fake-artist/sets/n12-lambda"});
    let (status, body, _) = h.post(&json!({ "tracks": [set] }), ALICE, None).await;
    assert_eq!(status, 202, "{body}");
    // The 202 comes before resolution: one entry so far.
    assert_eq!(body["data"]["total"], 1);
    let id = body["data"]["job_id"].as_str().unwrap().to_owned();
    // Four track workers at once (the track queue's mapping), the steps in any order.
    let _more = h.spawn_workers(3);
    assert_eq!(
        h.drain_with(4, WORKER_TIME).await,
        1 + 12 + 1,
        "start, one step per track, assemble"
    );
    assert!(!h.worker_logs().contains("message not processed"));

    let (_, body) = h.get(&id, ALICE).await;
    let d = &body["data"];
    assert_eq!(d["status"], "done", "{body}\n{}", h.worker_logs());
    assert_eq!(
        (d["total"].clone(), d["done"].clone()),
        (json!(12), json!(12))
    );
    let titles: Vec<String> = set_track_slugs("n12-lambda")
        .iter()
        .map(|s| format!("SoundCloud title of {s}"))
        .collect();
    let got: Vec<&str> = d["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(got, titles);
    let entries = support::zips::entries_at(d["download_url"].as_str().unwrap()).await;
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<String> = titles
        .iter()
        .map(|t| format!("Fake Artist - {t}.mp3"))
        .collect();
    assert_eq!(names, expected);
    assert_eq!(h.scdl_runs().len(), 12);
    // Resolution read SoundCloud's ids: the tracks are cached under them.
    let cached: Vec<String> =
        h.s3.objects()
            .into_iter()
            .filter(|k| k.starts_with(".cache/tracks/"))
            .collect();
    assert_eq!(cached.len(), 12, "{cached:?}");
    for track in d["tracks"].as_array().unwrap() {
        let key = format!(".cache/tracks/sc{}.mp3", track["id"].as_str().unwrap());
        assert!(cached.contains(&key), "{key} not in {cached:?}");
    }
    // The same set again: resolved again, fetched never.
    let (_, body, _) = h.post(&json!({ "tracks": [set] }), ALICE, None).await;
    let again = body["data"]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.drain_with(4, WORKER_TIME).await,
        2,
        "all cached: settled by the start step, then assembly"
    );
    let (_, body) = h.get(&again, ALICE).await;
    assert_eq!(body["data"]["status"], "done", "{body}");
    assert_eq!(h.scdl_runs().len(), 12, "cached tracks are not fetched");
    assert!(h.temp_is_empty());
    assert!(h.job_objects().is_empty());
    assert!(!h.worker_logs().contains(CLIENT_ID), "client id in logs");
}

/// The shared track cache on the Lambda path: a key the client cannot choose, repeats served
/// without scdl, failures not cached, concurrent jobs fetching a track once, and each done
/// track's own presigned link.
#[tokio::test(flavor = "multi_thread")]
async fn the_shared_track_cache_serves_repeats_once_and_keeps_tracks_apart() {
    use xomcloud_download_tracks::jobs::cache::{cache_key, cache_object};
    // Seven jobs from one caller: more than a burst of the rate limit.
    let h = &Harness::start(&[("RATE_LIMIT_PER_MINUTE", "0")]).await;
    let url = |slug: &str| format!("https://soundcloud.com/stub/{slug}");
    let cached = || -> Vec<String> {
        h.s3.objects()
            .into_iter()
            .filter(|k| k.starts_with(".cache/tracks/"))
            .collect()
    };
    let runs_of = |slug: &str| {
        let u = url(slug);
        h.scdl_runs().iter().filter(|r| **r == u).count()
    };
    let done_job = |id: String| async move {
        let (_, body) = h.get(&id, ALICE).await;
        assert_eq!(
            body["data"]["status"],
            "done",
            "{body}\n{}",
            h.worker_logs()
        );
        body["data"].clone()
    };

    // A first job: its good tracks land in the cache under keys of their URLs; the failed one
    // does not.
    let first = h
        .create(&[track(0, "bench"), track(1, "bench"), track(2, "notfound")])
        .await;
    assert_eq!(h.drain(WORKER_TIME).await, 1 + 3 + 1);
    let d = done_job(first).await;
    let zip_a = support::zips::entries_at(d["download_url"].as_str().unwrap()).await;
    let mut want: Vec<String> = ["bench-0", "bench-1"]
        .iter()
        .map(|s| cache_object(&cache_key(&url(s))))
        .collect();
    want.sort();
    assert_eq!(cached(), want);
    assert!(!h
        .s3
        .object_path(&cache_object(&cache_key(&url("notfound-2"))))
        .exists());

    // Each done track's own link: its cached bytes, named as its zip entry (the override is
    // signed into the URL, which is what S3 answers with), with MP3's content type.
    let link = d["tracks"][0]["url"].as_str().expect("a done track's url");
    assert!(
        d["tracks"][2].get("url").is_none(),
        "a failed track has none"
    );
    let parsed = url::Url::parse(link).unwrap();
    let query: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(
        query["response-content-disposition"],
        "attachment; filename=\"Stub - Song 0.mp3\"; filename*=UTF-8''Stub%20-%20Song%200.mp3"
    );
    assert_eq!(query["response-content-type"], "audio/mpeg");
    let bytes = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), zip_a[0].1.as_slice());

    // The same tracks again, named otherwise, beside a new one: only the new one is fetched,
    // and the zip's names are this request's.
    let renamed = |i: usize| {
        json!({"id": format!("t{i}"), "url": url(&format!("bench-{i}")),
               "title": format!("Other {i}"), "artist": "Else"})
    };
    let second = h.create(&[renamed(1), renamed(0), track(3, "bench")]).await;
    assert_eq!(
        h.drain(WORKER_TIME).await,
        1 + 1 + 1,
        "two tracks cached: one track step"
    );
    let d = done_job(second).await;
    let zip_b = support::zips::entries_at(d["download_url"].as_str().unwrap()).await;
    let names: Vec<&str> = zip_b.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Else - Other 1.mp3",
            "Else - Other 0.mp3",
            "Stub - Song 3.mp3"
        ]
    );
    assert_eq!(zip_b[0].1, zip_a[1].1);
    assert_eq!(zip_b[1].1, zip_a[0].1);
    assert_eq!(
        (runs_of("bench-0"), runs_of("bench-1"), runs_of("bench-3")),
        (1, 1, 1)
    );

    // A job of cached tracks only runs no scdl at all.
    let before = h.scdl_runs().len();
    let third = h.create(&[track(3, "bench"), track(0, "bench")]).await;
    assert_eq!(
        h.drain(WORKER_TIME).await,
        2,
        "all cached: start and assemble"
    );
    done_job(third).await;
    assert_eq!(h.scdl_runs().len(), before, "cached tracks are not fetched");

    // A forged id: track 0's id on another URL reaches nothing of track 0's.
    let forged = json!({"id": "t0", "url": url("bench-7"), "title": "Song 0", "artist": "Stub"});
    let fourth = h.create(&[forged]).await;
    assert_eq!(h.drain(WORKER_TIME).await, 1 + 1 + 1);
    let d = done_job(fourth).await;
    let zip_d = support::zips::entries_at(d["download_url"].as_str().unwrap()).await;
    assert_eq!(
        runs_of("bench-7"),
        1,
        "fetched, not taken from track 0's entry"
    );
    assert_ne!(zip_d[0].1, zip_a[0].1, "its own audio");
    assert_eq!(cached().len(), 4, "bench-0, 1, 3 and 7");

    // Two jobs asking at once for the same uncached track, run by two workers at once (Lambda's
    // concurrency): fetched once, both done with the same audio.
    let _more = h.spawn_workers(2);
    let shared = h.create(&[track(9, "bench")]).await;
    let also = h.create(&[track(9, "bench"), track(8, "bench")]).await;
    // Both starts, then the three track steps at once.
    assert_eq!(h.drain_with(3, WORKER_TIME).await, 2 + 3 + 2);
    assert!(!h.worker_logs().contains("message not processed"));
    let zip_e =
        support::zips::entries_at(done_job(shared).await["download_url"].as_str().unwrap()).await;
    let zip_f =
        support::zips::entries_at(done_job(also).await["download_url"].as_str().unwrap()).await;
    assert_eq!(runs_of("bench-9"), 1, "one fetch for both jobs");
    assert_eq!(zip_e[0].1, zip_f[0].1);
    // Cleanup removed no cached track; nothing is left per job or in the temp dir.
    assert_eq!(cached().len(), 4 + 2);
    assert!(h.job_objects().is_empty());
    assert!(h.temp_is_empty());
}
