//! Benchmarks of download jobs on one machine, with targets (run: `scripts/bench.sh`). The
//! release `xomcloud serve` runs as a child process in local mode (SQLite, the in-process queue,
//! zips in a temp data dir), driven over real HTTP with a token from `xomcloud token`; scdl is
//! the stub (`bench-` URLs: 1 s, then 5 MB copied from a file cached before any timed run).
//! Prints one line per scenario with PASS/FAIL beside each target and exits 1 when a target
//! fails (or its figure could not be measured).
//!
//! 1. A 100-track job, `POST /jobs` → polled `GET /jobs/{id}` (every 50 ms) reads `done`, over
//!    the same 100 tracks through the synchronous pipeline (`POST /download`, `MAX_TRACKS=100`),
//!    each in a fresh `serve`: target ≤ 1.10.
//! 2. The 202's latency while a 100-track job runs: 200 sequential `POST /jobs` of one track
//!    each, one every 100 ms (their steps queue behind the running job's tracks: serve runs
//!    `DOWNLOAD_CONCURRENCY` of them at a time across all jobs, in order, so they do not run
//!    during the measurement): target p99 ≤ 50 ms.
//! 3. Peak RSS (VmHWM) of `serve` after a job of 10, 50 and 100 tracks, each in a fresh
//!    `serve` (100: the job of scenario 1): flat in N, the largest at most 25 % above the
//!    smallest. Its process tree's peak (`serve` and its scdl runs) is reported beside it.

#[path = "../tests/support/mod.rs"]
mod support;

use support::bench::{machine, verdict};

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::proctree::{PeakTree, TreePeak};
use support::serve::{serve, Caller, Server};

const SECRET: &str = "jobs-bench-secret";
const MB: u64 = 1_000_000;
const TRACK_BYTES: u64 = 5 * MB;
const DELAY_SECONDS: f64 = 1.0;
const CONCURRENCY: usize = 4;
const POLL: Duration = Duration::from_millis(50);
const LIMIT: Duration = Duration::from_secs(900);

const RATIO_TARGET: f64 = 1.10;
const P99_TARGET: Duration = Duration::from_millis(50);
const FLAT_TARGET: f64 = 1.25;
/// How often the process tree's memory is sampled.
const TREE_EVERY: Duration = Duration::from_millis(10);

/// "X MB (tree Y MB)": the process's VmHWM and its process tree's sampled peak, or why /proc
/// could not tell.
fn memory(peak: &Result<TreePeak, String>) -> String {
    match peak {
        Ok(p) => format!("{:.1} MB (tree {:.1} MB)", mb(p.own_peak), mb(p.tree_peak)),
        Err(reason) => format!("unreadable ({reason})"),
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MB as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn tracks(n: usize, from: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            json!({"id": i.to_string(), "url": format!("https://soundcloud.com/bench/bench-{i}"),
                   "title": format!("Track {i}"), "artist": "Bench"})
        })
        .collect()
}

/// A fresh `xomcloud serve`: its own working and data dir, its own TMPDIR, and a client.
struct Serve {
    server: Server,
    caller: Caller,
    // Removed (with every zip and track) when the run is over.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Serve {
    fn start() -> Self {
        let (dir, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let delay = DELAY_SECONDS.to_string();
        let (size, concurrency) = (TRACK_BYTES.to_string(), CONCURRENCY.to_string());
        let envs = [
            ("SCDL_STUB_DELAY", delay.as_str()),
            ("SCDL_STUB_SIZE", size.as_str()),
            ("SCDL_STUB_CACHE", support::stub::bench_cache(TRACK_BYTES)),
            ("DOWNLOAD_CONCURRENCY", concurrency.as_str()),
            ("MAX_TRACKS", "100"),
            ("TRACK_TIMEOUT_SECONDS", "120"),
            ("SOUNDCLOUD_CLIENT_ID", "bench-client-id"),
            ("TMPDIR", tmp.path().to_str().unwrap()),
            ("AWS_LAMBDA_LOG_LEVEL", "info"),
            // The bench is one caller creating hundreds of jobs: per-caller limits off.
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("MAX_ACTIVE_JOBS_PER_CALLER", "0"),
        ];
        let server = serve(dir.path(), Some(SECRET), &envs);
        Self {
            caller: Caller::new(&server, "bench", SECRET),
            server,
            _dirs: (dir, tmp),
        }
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    async fn job(&self, id: &str) -> Value {
        let (status, body) = self.caller.get(id).await;
        assert_eq!(status, 200, "GET /jobs/{id}: {body}");
        body["data"].clone()
    }

    /// `POST /jobs` with `tracks`: the job's id.
    async fn create(&self, tracks: &[Value]) -> String {
        let (status, body, _) = self.caller.post(tracks, None).await;
        assert_eq!(status, 202, "{body}");
        body["data"]["job_id"].as_str().unwrap().to_owned()
    }

    /// Polls the job every `POLL` until it reads `status` (panics on another final status).
    async fn until(&self, id: &str, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                !matches!(
                    job["status"].as_str(),
                    Some("done" | "failed" | "cancelled")
                ),
                "job {id} ended {}: {job}",
                job["status"]
            );
            assert!(
                started.elapsed() < LIMIT,
                "job {id}: not {status} within {LIMIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A job of `n` tracks from `POST /jobs` until a poll reads `done`: the wall time.
    async fn run_job(&self, n: usize) -> Duration {
        let started = Instant::now();
        let id = self.create(&tracks(n, 0)).await;
        let done = self.until(&id, "done").await;
        let wall = started.elapsed();
        assert_eq!(done["done"], n, "{done}");
        wall
    }
}

/// Lets the kernel write back what the previous run left dirty, so one run's zips do not slow
/// the next one's disk.
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// From a job run's log: queued → last track settled (every track fetched and stored), in
/// seconds. (Its "job finished" line comes after the stored tracks are deleted, which may be
/// after a poll has read `done`.)
fn fetch_phase(logs: &str) -> Option<f64> {
    let times = support::logs::LogTimes::parse(logs);
    Some(times.last("track settled")? - times.last("job queued")?)
}

fn floor(tracks: usize) -> f64 {
    tracks.div_ceil(CONCURRENCY) as f64 * DELAY_SECONDS
}

/// Scenario 1; returns the job's serve's memory peaks for scenario 3.
async fn job_vs_pipeline(failed: &mut bool) -> Result<TreePeak, String> {
    const N: usize = 100;
    let sync_serve = Serve::start();
    let tree = PeakTree::start(sync_serve.pid(), TREE_EVERY);
    let started = Instant::now();
    let (status, body, _) = sync_serve.caller.download(tracks(N, 0)).await;
    let sync_wall = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["successful"], N, "{body}");
    let sync_rss = tree.stop();
    drop(sync_serve);
    settle_disk();

    let job_serve = Serve::start();
    let tree = PeakTree::start(job_serve.pid(), TREE_EVERY);
    let job_wall = job_serve.run_job(N).await;
    let job_rss = tree.stop();
    let fetching = fetch_phase(&job_serve.server.output());
    drop(job_serve);
    settle_disk();

    let ratio = job_wall.as_secs_f64() / sync_wall.as_secs_f64();
    *failed |= ratio > RATIO_TARGET;
    println!(
        "1. {N} tracks × 5 MB, 1 s each, concurrency {CONCURRENCY} (floor {:.0} s): POST /download {:.2} s; POST /jobs → done {:.2} s (polled every {} ms); job/sync {ratio:.3} [{} ≤ {RATIO_TARGET:.2}]",
        floor(N),
        sync_wall.as_secs_f64(),
        job_wall.as_secs_f64(),
        POLL.as_millis(),
        verdict(ratio <= RATIO_TARGET),
    );
    if let Some(fetching) = fetching {
        println!(
            "   of which (the job's log): queued → last track stored {fetching:.2} s ({:.3} × floor); then the zip streamed from the stored tracks → done read {:.2} s",
            fetching / floor(N),
            job_wall.as_secs_f64() - fetching
        );
    }
    println!(
        "   peak RSS of serve (VmHWM; its process tree's peak sampled every {} ms): synchronous pipeline {}, job {}",
        TREE_EVERY.as_millis(),
        memory(&sync_rss),
        memory(&job_rss)
    );
    job_rss
}

/// Scenario 2.
async fn accept_latency(failed: &mut bool) {
    const SAMPLES: usize = 200;
    const EVERY: Duration = Duration::from_millis(100);
    let serve = Serve::start();
    let big = serve.create(&tracks(100, 0)).await;
    serve.until(&big, "running").await;
    // The first track is under way: its scdl runs, the next ones follow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let started = Instant::now();
        let (status, body, _) = serve.caller.post(tracks(1, 1000 + i), None).await;
        let latency = started.elapsed();
        assert_eq!(status, 202, "{body}");
        latencies.push(latency);
        tokio::time::sleep(EVERY.saturating_sub(latency)).await;
    }
    // Every sample was taken while the big job ran: it must still be running now.
    let job = serve.job(&big).await;
    let running = job["status"] == "running";
    let settled = job["settled"].as_u64().unwrap_or(0);
    drop(serve);
    settle_disk();

    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[SAMPLES - 1],
    );
    let ok = running && p99 <= P99_TARGET;
    *failed |= !ok;
    println!(
        "2. 202 of POST /jobs while a 100-track job runs: {SAMPLES} sequential (1 track each, one every {} ms, queued behind it): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms [{} p99 ≤ {} ms]; the job still running at the end: {} ({settled}/100 tracks settled)",
        EVERY.as_millis(),
        ms(p50),
        ms(p99),
        ms(max),
        verdict(ok),
        P99_TARGET.as_millis(),
        if running { "yes" } else { "NO (samples not all taken while it ran)" },
    );
}

/// Scenario 3; `hundred` is the peak RSS of scenario 1's job.
async fn rss_by_size(hundred: Result<TreePeak, String>, failed: &mut bool) {
    let mut rss = Vec::new();
    for n in [10, 50] {
        let serve = Serve::start();
        let tree = PeakTree::start(serve.pid(), TREE_EVERY);
        serve.run_job(n).await;
        rss.push((n, tree.stop()));
        drop(serve);
        settle_disk();
    }
    rss.push((100, hundred));
    let figures: Vec<String> = rss
        .iter()
        .map(|(n, r)| format!("{n}: {}", memory(r)))
        .collect();
    let known: Vec<u64> = rss
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|p| p.own_peak))
        .collect();
    let verdict_line = if known.len() == rss.len() {
        let (max, min) = (*known.iter().max().unwrap(), *known.iter().min().unwrap());
        let spread = max as f64 / min as f64;
        let flat = spread <= FLAT_TARGET;
        *failed |= !flat;
        format!("max/min {spread:.2} [{} ≤ {FLAT_TARGET:.2}]", verdict(flat))
    } else {
        *failed = true;
        "[FAIL: not measured]".to_owned()
    };
    println!(
        "3. peak RSS (VmHWM) of serve by job size (× 5 MB, each a fresh serve; the tree: serve and its scdl runs, sampled): {}; flat in N: {verdict_line}",
        figures.join(", ")
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let failed = runtime.block_on(async {
        println!("machine: {}", machine());
        assert!(
            Path::new(env!("CARGO_BIN_EXE_xomcloud")).is_file(),
            "the release xomcloud binary is missing"
        );
        support::stub::bench_cache(TRACK_BYTES);
        let mut failed = false;
        let hundred = job_vs_pipeline(&mut failed).await;
        accept_latency(&mut failed).await;
        rss_by_size(hundred, &mut failed).await;
        failed
    });
    if failed {
        println!("jobs: a target FAILED");
        std::process::exit(1);
    }
}
