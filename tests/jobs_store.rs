//! The job store contract, run alike against DynamoStore (moto's DynamoDB) and SqliteStore, and
//! the SQS queue against moto's SQS.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use support::moto::Moto;
use xomcloud_jobs::model::unix_now;
use xomcloud_jobs::store::dynamodb::create_table;
use xomcloud_jobs::{
    new_job_id, parse_message, Created, DynamoStore, Job, JobMessage, JobQueue, JobStatus,
    JobStore, Outcome, SqliteStore, SqsQueue, TrackSpec, TrackState, TrackUpdate,
};

const TABLE: &str = "xomcloud-jobs";
const TTL: u64 = 86_400;

fn spec(i: usize) -> TrackSpec {
    TrackSpec {
        id: (100_000 + i).to_string(),
        url: format!("https://soundcloud.com/artist/track-{i}"),
        title: format!("Track {i}"),
        artist: "Artist".into(),
        cache_key: None,
    }
}

fn job_of(owner: &str, specs: Vec<TrackSpec>) -> Job {
    Job::new(new_job_id(), owner.into(), specs, unix_now(), TTL)
}

/// The largest job the API admits: 200 tracks, 2048-char URLs, 300-char titles and artists
/// (multi-byte, so 600 bytes each).
fn largest_job(owner: &str) -> Job {
    let specs = (0..200)
        .map(|i| {
            let prefix = format!("https://soundcloud.com/artist/track-{i:03}-");
            TrackSpec {
                id: (9_000_000 + i).to_string(),
                url: format!("{prefix}{}", "x".repeat(2048 - prefix.len())),
                title: format!("{i:03}{}", "é".repeat(297)),
                artist: format!("{i:03}{}", "ß".repeat(297)),
                cache_key: None,
            }
        })
        .collect::<Vec<_>>();
    assert!(specs
        .iter()
        .all(|s| s.url.len() == 2048 && s.title.chars().count() == 300));
    job_of(owner, specs)
}

fn update(state: TrackState, attempts: u32) -> TrackUpdate {
    TrackUpdate {
        state,
        error: None,
        size: None,
        crc32: None,
        attempts,
    }
}

/// What every `JobStore` must do.
async fn contract(store: &dyn JobStore) {
    use JobStatus::*;

    // A job round-trips; unknown ids are None.
    let small = job_of("alice", (0..3).map(spec).collect());
    assert_eq!(store.create(&small, None).await.unwrap(), Created::New);
    assert_eq!(store.get(&small.id).await.unwrap(), Some(small.clone()));
    assert_eq!(store.status(&small.id).await.unwrap(), Some(Queued));
    let unknown = new_job_id();
    assert_eq!(store.get(&unknown).await.unwrap(), None);
    assert_eq!(store.status(&unknown).await.unwrap(), None);

    // The largest job fits and comes back whole, in order.
    let large = largest_job("alice");
    let started = Instant::now();
    assert_eq!(store.create(&large, None).await.unwrap(), Created::New);
    let create_time = started.elapsed();
    let started = Instant::now();
    let read = store.get(&large.id).await.unwrap();
    let get_time = started.elapsed();
    assert!(
        read == Some(large.clone()),
        "the 200-track job did not round-trip"
    );
    eprintln!("200-track job: create {create_time:?}, get {get_time:?}");

    // The same owner and key name one job; another owner's key is its own.
    let first = job_of("alice", vec![spec(1)]);
    let retry = job_of("alice", vec![spec(1)]);
    assert_eq!(
        store.create(&first, Some("key-1")).await.unwrap(),
        Created::New
    );
    assert_eq!(
        store.create(&retry, Some("key-1")).await.unwrap(),
        Created::Existing(first.id.clone())
    );
    assert_eq!(
        store.get(&retry.id).await.unwrap(),
        None,
        "a repeat stores nothing"
    );
    let bob = job_of("bob", vec![spec(1)]);
    assert_eq!(
        store.create(&bob, Some("key-1")).await.unwrap(),
        Created::New
    );

    // A key whose job has expired is free again.
    let now = unix_now();
    let expired = Job::new(new_job_id(), "carol".into(), vec![spec(1)], now - 100, 10);
    assert_eq!(
        store.create(&expired, Some("k")).await.unwrap(),
        Created::New
    );
    let fresh = job_of("carol", vec![spec(1)]);
    assert_eq!(store.create(&fresh, Some("k")).await.unwrap(), Created::New);

    // Twenty racing creates with one key: exactly one job, every caller told its id.
    let racers: Vec<Job> = (0..20).map(|_| job_of("dave", vec![spec(7)])).collect();
    let results = futures::future::join_all(racers.iter().map(|j| store.create(j, Some("race"))))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let winners: Vec<&Job> = racers
        .iter()
        .zip(&results)
        .filter(|(_, r)| **r == Created::New)
        .map(|(j, _)| j)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].id.clone();
    let ids: Vec<&str> = racers
        .iter()
        .zip(&results)
        .map(|(j, r)| match r {
            Created::New => j.id.as_str(),
            Created::Existing(id) => id.as_str(),
            Created::TooManyActive => panic!("no caller, no limit"),
        })
        .collect();
    assert!(ids.iter().all(|id| *id == winner), "{ids:?}");
    assert_eq!(store.get(&winner).await.unwrap().as_ref(), Some(winners[0]));
    let stored_racers = futures::future::join_all(racers.iter().map(|j| store.status(&j.id))).await;
    assert_eq!(
        stored_racers
            .iter()
            .filter(|s| matches!(s, Ok(Some(_))))
            .count(),
        1,
        "only the winner is stored"
    );

    // Transitions are conditional on the current status.
    let none = Outcome::default();
    let id = &small.id;
    assert!(!store.transition(id, &[Running], Done, &none).await.unwrap());
    assert!(store
        .transition(id, &[Queued], Running, &none)
        .await
        .unwrap());
    assert!(!store
        .transition(id, &[Queued], Running, &none)
        .await
        .unwrap());
    assert!(
        store
            .transition(id, &[Running], Running, &none)
            .await
            .unwrap(),
        "a resumed run"
    );
    assert!(
        store
            .transition(id, &[Running], Queued, &none)
            .await
            .unwrap(),
        "handed back"
    );
    assert!(store
        .transition(id, &[Queued], Running, &none)
        .await
        .unwrap());
    let done = Outcome {
        error: None,
        zip_key: Some("alice/20260101_000000-1a2b3c4d/xomcloud-tracks.zip".into()),
    };
    assert!(store.transition(id, &[Running], Done, &done).await.unwrap());
    assert!(!store
        .transition(id, &[Queued, Running], Cancelled, &none)
        .await
        .unwrap());
    assert!(
        store
            .transition(id, &[Done], Cancelled, &none)
            .await
            .is_err(),
        "forbidden"
    );
    assert!(
        store.transition(id, &[Queued], Done, &none).await.is_err(),
        "forbidden"
    );
    assert!(!store
        .transition(&unknown, &[Queued], Cancelled, &none)
        .await
        .unwrap());
    assert_eq!(
        store.status(&unknown).await.unwrap(),
        None,
        "a miss creates nothing"
    );
    let after = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.zip_key.clone(), after.error.clone()),
        (Done, done.zip_key, None)
    );
    assert!(after.updated_at >= small.updated_at);
    assert_eq!(after.tracks, small.tracks);

    let failed = Outcome {
        error: Some("All 1 downloads failed".into()),
        zip_key: None,
    };
    assert!(store
        .transition(&first.id, &[Queued, Running], Failed, &failed)
        .await
        .unwrap());
    let after = store.get(&first.id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.error, after.zip_key),
        (Failed, failed.error, None)
    );

    // Track updates: written, cleared by the next update, several at once on one job.
    let failed_track = TrackUpdate {
        error: Some("Track not found (deleted, private or a wrong URL)".into()),
        ..update(TrackState::Failed, 1)
    };
    store
        .update_track(&large.id, 5, &failed_track)
        .await
        .unwrap();
    let done_track = TrackUpdate {
        size: Some(7_340_032),
        crc32: Some(0xcbf4_3926),
        ..update(TrackState::Done, 2)
    };
    store.update_track(&large.id, 5, &done_track).await.unwrap();
    let parallel: Vec<(usize, TrackUpdate)> = (10..20)
        .map(|i| (i, update(TrackState::Downloading, 1)))
        .chain([(199, failed_track.clone()), (0, done_track.clone())])
        .collect();
    futures::future::try_join_all(
        parallel
            .iter()
            .map(|(i, u)| store.update_track(&large.id, *i, u)),
    )
    .await
    .unwrap();
    let after = store.get(&large.id).await.unwrap().unwrap();
    let mut expected = large.tracks.clone();
    expected[5].apply(&done_track);
    for (i, u) in &parallel {
        expected[*i].apply(u);
    }
    assert!(after.tracks == expected, "track updates did not read back");
    assert_eq!(
        (
            after.done_count(),
            after.failed_count(),
            after.settled_count()
        ),
        (2, 1, 3)
    );
    assert!(after.updated_at >= large.updated_at);
    assert!(store
        .update_track(&large.id, 200, &done_track)
        .await
        .is_err());
    assert!(store.update_track(&unknown, 0, &done_track).await.is_err());
    assert_eq!(store.get(&unknown).await.unwrap(), None, "no stray items");

    replace_tracks_contract(store).await;
    lease_contract(store).await;
    settle_contract(store).await;
}

/// The shared track cache's lease: one holder at a time per key, the holder may take it again,
/// a lease given back or expired is free, giving back someone else's lease does nothing, and
/// keys are independent. Expiry is checked with leases taken already expired (no waiting).
async fn lease_contract(store: &dyn JobStore) {
    let now = unix_now();
    let key = "u0123456789abcdef0123456789abcdef";
    assert!(store.take_lease(key, "job-a/0", now + 300).await.unwrap());
    assert!(!store.take_lease(key, "job-b/3", now + 300).await.unwrap());
    assert!(
        store.take_lease(key, "job-a/0", now + 300).await.unwrap(),
        "again, same holder"
    );
    assert!(store
        .take_lease("u-other", "job-b/3", now + 300)
        .await
        .unwrap());
    store.release_lease(key, "job-b/3").await.unwrap();
    assert!(
        !store.take_lease(key, "job-b/3", now + 300).await.unwrap(),
        "not b's to give back"
    );
    store.release_lease(key, "job-a/0").await.unwrap();
    assert!(
        store.take_lease(key, "job-b/3", now + 300).await.unwrap(),
        "given back: free"
    );
    store.release_lease(key, "job-b/3").await.unwrap();
    store.release_lease(key, "job-b/3").await.unwrap();
    // A holder that died: its lease runs out and the next one takes it over.
    assert!(store.take_lease(key, "job-c/1", now - 1).await.unwrap());
    assert!(
        store.take_lease(key, "job-d/2", now + 300).await.unwrap(),
        "expired: taken over"
    );
    assert!(!store.take_lease(key, "job-c/1", now + 300).await.unwrap());
    // Leases are not jobs: no job id reads one.
    assert_eq!(store.get(key).await.unwrap(), None);
}

/// A track step's writes: `track` reads one track and the job's status; `settle_track` settles
/// a track once and counts it once, however often it is repeated, and tells exactly one of the
/// callers that it settled the last track; a progress write never overwrites a settled track.
async fn settle_contract(store: &dyn JobStore) {
    use JobStatus::*;
    let job = job_of("settle", (0..3).map(spec).collect());
    store.create(&job, None).await.unwrap();
    let (status, track) = store.track(&job.id, 1).await.unwrap().unwrap();
    assert_eq!((status, track.state), (Queued, TrackState::Queued));
    assert_eq!(track.spec, spec(1));
    assert_eq!(store.track(&job.id, 3).await.unwrap(), None);
    assert_eq!(store.track(&new_job_id(), 0).await.unwrap(), None);
    assert!(store
        .transition(&job.id, &[Queued], Running, &Outcome::default())
        .await
        .unwrap());

    let done = TrackUpdate {
        state: TrackState::Done,
        error: None,
        size: Some(5_000),
        crc32: Some(0xdead_beef),
        attempts: 1,
    };
    let failed = TrackUpdate {
        error: Some("Track not found".into()),
        ..update(TrackState::Failed, 2)
    };
    let first = store.settle_track(&job.id, 0, &done).await.unwrap();
    assert_eq!(
        (first.counted, first.settled, first.total, first.status),
        (true, 1, 3, Running)
    );
    assert!(!first.was_last() && !first.all());
    // Again (a redelivered message), even with another outcome: nothing changes, not counted.
    let again = store.settle_track(&job.id, 0, &failed).await.unwrap();
    assert_eq!((again.counted, again.settled), (false, 1));
    let (_, track) = store.track(&job.id, 0).await.unwrap().unwrap();
    assert_eq!((track.state, track.size), (TrackState::Done, Some(5_000)));
    // A late progress write (a duplicate delivery) leaves the settled track alone.
    store
        .update_track(&job.id, 0, &update(TrackState::Downloading, 1))
        .await
        .unwrap();
    assert_eq!(
        store.track(&job.id, 0).await.unwrap().unwrap().1.state,
        TrackState::Done
    );
    // Progress on an unsettled track is written; settling needs done or failed.
    store
        .update_track(&job.id, 1, &update(TrackState::Downloading, 1))
        .await
        .unwrap();
    assert!(store
        .settle_track(&job.id, 1, &update(TrackState::Downloading, 1))
        .await
        .is_err());
    assert!(store.settle_track(&job.id, 3, &done).await.is_err());
    assert!(store.settle_track(&new_job_id(), 0, &done).await.is_err());
    // The last two settle at once: exactly one of them is told it was last.
    let (a, b) = tokio::join!(
        store.settle_track(&job.id, 1, &failed),
        store.settle_track(&job.id, 2, &done)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.counted && b.counted);
    assert_eq!(
        [a.was_last(), b.was_last()].iter().filter(|l| **l).count(),
        1,
        "{a:?} {b:?}"
    );
    let late = store.settle_track(&job.id, 2, &done).await.unwrap();
    assert!(late.all() && !late.was_last());
    let job = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!((job.done_count(), job.failed_count()), (2, 1));
    assert_eq!(job.tracks[1].error.as_deref(), Some("Track not found"));
}

/// Resolution's write: a running job's tracks become the resolved list, all queued, and its
/// total their count; growing (a set expanding) and shrinking alike; nothing else changes, and
/// a job that is not running is left alone.
async fn replace_tracks_contract(store: &dyn JobStore) {
    use JobStatus::*;
    let bare = TrackSpec {
        id: String::new(),
        url: "https://soundcloud.com/artist/sets/mix".into(),
        title: String::new(),
        artist: String::new(),
        cache_key: None,
    };
    let job = job_of("carol", vec![bare.clone(), spec(1)]);
    assert_eq!(store.create(&job, None).await.unwrap(), Created::New);
    assert_eq!(
        store.get(&job.id).await.unwrap().unwrap().tracks[0].spec,
        bare
    );
    // Queued: not claimed by a runner yet.
    assert!(!store.replace_tracks(&job.id, &[spec(9)]).await.unwrap());
    assert!(store
        .transition(&job.id, &[Queued], Running, &Outcome::default())
        .await
        .unwrap());

    // Resolution's tracks carry their cache key (every other one here), which reads back.
    let grown: Vec<TrackSpec> = (10..40)
        .map(|i| TrackSpec {
            cache_key: (i % 2 == 0).then(|| format!("sc{}", 500 + i)),
            ..spec(i)
        })
        .collect();
    assert!(store.replace_tracks(&job.id, &grown).await.unwrap());
    let after = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(after.tracks.len(), 30);
    assert!(after
        .tracks
        .iter()
        .all(|t| t.state == TrackState::Queued && t.attempts == 0));
    let specs: Vec<TrackSpec> = after.tracks.iter().map(|t| t.spec.clone()).collect();
    assert_eq!(specs, grown);
    assert_eq!(
        (after.status, after.owner.as_str(), after.created_at),
        (Running, "carol", job.created_at)
    );
    // The new tracks are the job's: they take updates like any other.
    store
        .update_track(&job.id, 29, &update(TrackState::Downloading, 1))
        .await
        .unwrap();
    assert!(store
        .update_track(&job.id, 30, &update(TrackState::Done, 1))
        .await
        .is_err());

    let shrunk: Vec<TrackSpec> = (50..53).map(spec).collect();
    assert!(store.replace_tracks(&job.id, &shrunk).await.unwrap());
    let after = store.get(&job.id).await.unwrap().unwrap();
    let specs: Vec<TrackSpec> = after.tracks.iter().map(|t| t.spec.clone()).collect();
    assert_eq!(specs, shrunk);

    // Final, or unknown: nothing changes.
    assert!(store
        .transition(&job.id, &[Running], Cancelled, &Outcome::default())
        .await
        .unwrap());
    assert!(!store.replace_tracks(&job.id, &grown).await.unwrap());
    assert_eq!(store.get(&job.id).await.unwrap().unwrap().tracks.len(), 3);
    assert!(!store.replace_tracks(&new_job_id(), &grown).await.unwrap());
}

/// What every `JobStore` with an active-jobs limit of 3 must do.
async fn active_limit_contract(store: &dyn JobStore) {
    use JobStatus::*;
    let none = Outcome::default();
    let counted = |caller: &str| job_of("front-end", vec![spec(1)]).with_caller(caller);

    // Twenty concurrent creations by one caller: exactly three get in.
    let racers: Vec<Job> = (0..20).map(|_| counted("caller-a")).collect();
    let results = futures::future::join_all(racers.iter().map(|j| store.create(j, None)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let admitted: Vec<&Job> = racers
        .iter()
        .zip(&results)
        .filter(|(_, r)| **r == Created::New)
        .map(|(j, _)| j)
        .collect();
    assert_eq!(admitted.len(), 3, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Created::New | Created::TooManyActive)),
        "{results:?}"
    );
    let stored = futures::future::join_all(racers.iter().map(|j| store.status(&j.id))).await;
    assert_eq!(
        stored.iter().filter(|s| matches!(s, Ok(Some(_)))).count(),
        3,
        "a refused job is not stored"
    );
    assert_eq!(
        store.get(&admitted[0].id).await.unwrap().as_ref(),
        Some(admitted[0]),
        "the caller round-trips"
    );

    // Another caller (the same principal from another address) and uncounted jobs get in.
    assert_eq!(
        store.create(&counted("caller-b"), None).await.unwrap(),
        Created::New
    );
    let uncounted = job_of("front-end", vec![spec(2)]);
    assert_eq!(store.create(&uncounted, None).await.unwrap(), Created::New);

    // An idempotent repeat names its job even at the limit.
    let a = |n: usize| admitted[n].id.as_str();
    let keyed = counted("caller-b");
    assert_eq!(store.create(&keyed, Some("k")).await.unwrap(), Created::New);
    let b_full = counted("caller-b");
    assert_eq!(store.create(&b_full, None).await.unwrap(), Created::New);
    assert_eq!(
        store.create(&counted("caller-b"), None).await.unwrap(),
        Created::TooManyActive
    );
    assert_eq!(
        store.create(&counted("caller-b"), Some("k")).await.unwrap(),
        Created::Existing(keyed.id.clone())
    );

    // Running still counts; done, failed and cancelled free a slot each.
    assert!(store
        .transition(a(0), &[Queued], Running, &none)
        .await
        .unwrap());
    assert!(store
        .transition(a(0), &[Running], Running, &none)
        .await
        .unwrap());
    assert_eq!(
        store.create(&counted("caller-a"), None).await.unwrap(),
        Created::TooManyActive
    );
    let done = Outcome {
        error: None,
        zip_key: Some("front-end/x/xomcloud-tracks.zip".into()),
    };
    assert!(store
        .transition(a(0), &[Running], Done, &done)
        .await
        .unwrap());
    let refill = counted("caller-a");
    assert_eq!(store.create(&refill, None).await.unwrap(), Created::New);
    assert_eq!(
        store.create(&counted("caller-a"), None).await.unwrap(),
        Created::TooManyActive
    );

    // Two transitions race to end one job: one wins, and one slot comes back, not two.
    let cancel = store.transition(a(1), &[Queued, Running], Cancelled, &none);
    let fail = Outcome {
        error: Some("All 1 downloads failed".into()),
        zip_key: None,
    };
    let failed = store.transition(a(1), &[Queued], Failed, &fail);
    let (cancelled, failed) = futures::future::join(cancel, failed).await;
    assert_eq!(
        [cancelled.unwrap(), failed.unwrap()]
            .iter()
            .filter(|won| **won)
            .count(),
        1
    );
    // A final job ending again frees nothing.
    assert!(!store
        .transition(a(1), &[Queued, Running], Cancelled, &none)
        .await
        .unwrap());
    let outcomes = futures::future::join_all(
        (0..3)
            .map(|_| counted("caller-a"))
            .collect::<Vec<_>>()
            .iter()
            .map(|j| async move { store.create(j, None).await.unwrap() }),
    )
    .await;
    assert_eq!(
        outcomes.iter().filter(|r| **r == Created::New).count(),
        1,
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_store_meets_the_contract() {
    // Atomic: the contract settles two tracks at once.
    let moto = Moto::start_atomic();
    let client = moto.dynamodb_client().await;
    create_table(&client, TABLE).await.unwrap();
    // Small pages make the 200-track job span several Query pages.
    let store = DynamoStore::new(client, TABLE).with_query_page_size(64);
    contract(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("jobs.sqlite3")).unwrap();
    contract(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_store_holds_the_active_jobs_limit() {
    let moto = Moto::start_atomic();
    let client = moto.dynamodb_client().await;
    create_table(&client, TABLE).await.unwrap();
    let store = DynamoStore::new(client.clone(), TABLE).with_active_limit(3);
    active_limit_contract(&store).await;
    // The counts are items of their own, under a key no job id makes; caller-a is full again
    // (two running or queued, one just admitted), caller-b holds its three.
    let items = scan(&client).await;
    let active = |caller: &str| {
        items
            .iter()
            .find(|i| {
                i.get("pk").and_then(|v| v.as_s().ok()) == Some(&format!("caller#{caller}"))
                    && i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("active")
            })
            .and_then(|i| i.get("active"))
            .and_then(|v| v.as_n().ok())
            .cloned()
    };
    assert_eq!(active("caller-a").as_deref(), Some("3"));
    assert_eq!(active("caller-b").as_deref(), Some("3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_holds_the_active_jobs_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("jobs.sqlite3"))
        .unwrap()
        .with_active_limit(3);
    active_limit_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_rate_limiter_counts_one_bucket_per_caller() {
    use xomcloud_jobs::limiter::{Bucket, DynamoLimiter, RateLimiter};
    let moto = Moto::start_atomic();
    let client = moto.dynamodb_client().await;
    create_table(&client, TABLE).await.unwrap();
    // One a minute, three at once: nothing refills during the test.
    let limiter = DynamoLimiter::new(client.clone(), TABLE, Bucket::new(1, 3).unwrap());
    let verdicts = futures::future::join_all((0..10).map(|_| limiter.acquire("caller-a")))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut remaining: Vec<u32> = verdicts
        .iter()
        .filter(|v| v.allowed)
        .map(|v| v.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2], "exactly the burst, each token once");
    let refused: Vec<_> = verdicts.iter().filter(|v| !v.allowed).collect();
    assert_eq!(refused.len(), 7);
    assert!(refused
        .iter()
        .all(|v| (1..=60).contains(&v.retry_after) && v.remaining == 0));
    let other = limiter.acquire("caller-b").await.unwrap();
    assert_eq!((other.allowed, other.remaining), (true, 2));
    // The bucket item: under `caller#`, with a TTL past the moment it is full again.
    let items = scan(&client).await;
    let bucket = items
        .iter()
        .find(|i| {
            i.get("pk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("caller#caller-a")
        })
        .unwrap();
    assert_eq!(bucket["sk"].as_s().unwrap(), "rate");
    let tat: u64 = bucket["tat"].as_n().unwrap().parse().unwrap();
    let expires_at: u64 = bucket["expires_at"].as_n().unwrap().parse().unwrap();
    assert!(
        expires_at * 1000 > tat && expires_at <= unix_now() + 5 * 60,
        "{tat} {expires_at}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_items_have_the_documented_layout() {
    let moto = Moto::start();
    let client = moto.dynamodb_client().await;
    create_table(&client, TABLE).await.unwrap();
    let store = DynamoStore::new(client.clone(), TABLE);
    let job = largest_job("alice");
    store.create(&job, Some("idem-key")).await.unwrap();
    // DynamoDB's own paging (1 MB) holds the largest job in one Query page.
    let started = Instant::now();
    assert!(store.get(&job.id).await.unwrap() == Some(job.clone()));
    eprintln!("200-track job: get in one page {:?}", started.elapsed());

    let s = |item: &HashMap<String, AttributeValue>, name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    let n = |item: &HashMap<String, AttributeValue>, name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    store
        .take_lease("u0123456789abcdef0123456789abcdef", "j/0", 4_000_000_000)
        .await
        .unwrap();
    let items = scan(&client).await;
    let lease = items.iter().find(|i| s(i, "sk") == "lease").unwrap();
    assert_eq!(s(lease, "pk"), "lease#u0123456789abcdef0123456789abcdef");
    assert_eq!(s(lease, "holder"), "j/0");
    assert_eq!(n(lease, "expires_at"), Some(4_000_000_000));
    let items: Vec<_> = items
        .into_iter()
        .filter(|i| s(i, "sk") != "lease")
        .collect();
    assert_eq!(items.len(), 1 + 200 + 1, "job + tracks + idempotency claim");
    let pk = format!("job#{}", job.id);
    let job_item = items.iter().find(|i| s(i, "sk") == "job").unwrap();
    assert_eq!(s(job_item, "pk"), pk);
    assert_eq!(s(job_item, "status"), "queued");
    assert_eq!(n(job_item, "total"), Some(200));
    let tracks: Vec<_> = items
        .iter()
        .filter(|i| s(i, "sk").starts_with("track#"))
        .collect();
    assert_eq!(tracks.len(), 200);
    assert!(tracks.iter().all(|i| s(i, "pk") == pk));
    assert!(tracks.iter().any(|i| s(i, "sk") == "track#00199"));
    let claim = items.iter().find(|i| s(i, "sk") == "idem").unwrap();
    assert!(s(claim, "pk").starts_with("idem#"));
    assert!(
        !s(claim, "pk").contains("idem-key"),
        "the client's key is hashed"
    );
    assert_eq!(s(claim, "job_id"), job.id);
    // Every item expires with the job (the table's TTL attribute).
    assert!(items
        .iter()
        .all(|i| n(i, "expires_at") == Some(job.expires_at)));

    let ttl = client
        .describe_time_to_live()
        .table_name(TABLE)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
}

async fn scan(client: &aws_sdk_dynamodb::Client) -> Vec<HashMap<String, AttributeValue>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(TABLE)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return items,
        }
    }
}

/// Every message in `url`, parsed (as many receives as it takes).
async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<JobMessage> {
    let mut messages = Vec::new();
    loop {
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if received.messages().is_empty() {
            return messages;
        }
        for message in received.messages() {
            let body = message.body().unwrap();
            assert!(body.starts_with(r#"{"job_id":""#), "{body}");
            messages.push(parse_message(body).unwrap());
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_queue_sends_track_steps_to_the_track_queue_in_batches() {
    let moto = Moto::start();
    let client = moto.sqs_client().await;
    let mut urls = Vec::new();
    for name in ["xomcloud-jobs", "xomcloud-tracks"] {
        let url = client.create_queue().queue_name(name).send().await.unwrap();
        urls.push(url.queue_url.unwrap());
    }
    let queue =
        SqsQueue::new(client.clone(), urls[0].clone()).with_track_queue(Some(urls[1].clone()));
    let id = new_job_id();
    queue.send(&JobMessage::start(&id)).await.unwrap();
    // 23 tracks (three batches) and an assemble step in one call.
    let mut steps: Vec<JobMessage> = (0..23).map(|i| JobMessage::track(&id, i)).collect();
    steps.push(JobMessage::assemble(&id));
    queue.send_all(&steps).await.unwrap();

    let jobs: HashSet<JobMessage> = drain(&client, &urls[0]).await.into_iter().collect();
    let tracks: HashSet<JobMessage> = drain(&client, &urls[1]).await.into_iter().collect();
    assert_eq!(
        jobs,
        HashSet::from([JobMessage::start(&id), JobMessage::assemble(&id)])
    );
    assert_eq!(tracks, steps[..23].iter().cloned().collect());

    // Without a track queue every step goes to the jobs queue.
    let single = SqsQueue::new(client.clone(), urls[0].clone());
    single.send_all(&steps).await.unwrap();
    let all: HashSet<JobMessage> = drain(&client, &urls[0]).await.into_iter().collect();
    assert_eq!(all, steps.iter().cloned().collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_send_to_a_missing_queue_is_an_error() {
    let moto = Moto::start();
    let client = moto.sqs_client().await;
    let queue = SqsQueue::new(
        client,
        format!("{}/123456789012/no-such-queue", moto.endpoint()),
    );
    let err = queue
        .send(&JobMessage::start(new_job_id()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("job queue: SendMessage"),
        "{err}"
    );
}
