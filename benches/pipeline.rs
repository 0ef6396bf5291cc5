//! Benchmarks with targets (run: `scripts/bench.sh`). The release Lambda binaries are driven
//! through the Lambda Runtime API exactly as in production, with S3 = in-process s3s-fs and scdl
//! replaced by the stub with a set delay and file size. Prints one line per scenario, with
//! PASS/FAIL beside each target, and exits 1 when a target fails or its figure could not be
//! measured.
//!
//! 1. 20 tracks × 5 MB, 1 s each, concurrency 4, three times. Beside each run, the harness alone
//!    measured the way the run uses it: the 20 stub runs with the pipeline's own argument vector,
//!    4 at once, then CompleteMultipartUpload of the same 100 MB on the same S3 server. Our share
//!    (run wall − harness wall) must be ≤ 5 % of the floor in every run.
//! 2. 200 tracks × 5 MB, 0.1 s each: peak RSS of the function ≤ 64 MB, peak temp dir ≤ 4 tracks
//!    and a part; the process tree's peak (the function and its scdl runs) reported beside it.
//! 3. Peak RSS for 5 / 50 / 200 tracks: ≤ 64 MB and flat in N.
//! 4. The authorizer: cold start ≤ 20 ms, warm p99 ≤ 1 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use support::bench::{verdict, Verdicts};

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::bins::workspace_bin;
use support::proctree::{PeakTree, TreePeak};
use support::runtime_api::{spawn_function, RuntimeApi};
use support::s3::S3Server;

const MB: u64 = 1_000_000;
const TRACK_BYTES: u64 = 5 * MB;
const CONCURRENCY: usize = 4;
const PART_BYTES: u64 = 5 * 1024 * 1024;
const CLIENT_ID: &str = "bench-client-id";

/// Scenario 1: runs, and the most our share may be, as a fraction of the floor.
const FIRST_RUNS: usize = 3;
const SHARE_TARGET: f64 = 0.05;
const RSS_TARGET: u64 = 64 * MB;
const FLAT_TARGET: f64 = 1.25;
/// How often the process tree's memory is sampled.
const TREE_EVERY: Duration = Duration::from_millis(10);

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Samples the size of `dir` every 2 ms until stopped; returns the peak.
fn watch_dir(dir: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (d, s, p) = (dir.to_owned(), stop.clone(), peak.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(dir_bytes(&d), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        p.load(Ordering::Relaxed)
    });
    (stop, handle)
}

/// What a run samples besides its wall time. Each sampler costs the harness CPU, which the
/// function under test would feel on a small machine: only where the figure is wanted.
#[derive(Clone, Copy, Default)]
struct Watch {
    temp_dir: bool,
    memory: bool,
}

struct Run {
    wall: Duration,
    peak_temp: u64,
    /// The function's own peak and its process tree's (`Some` when watched; `Err`: unreadable).
    memory: Option<Result<TreePeak, String>>,
    /// From the function's log: request received → last part uploaded, and last part → answer
    /// (CompleteMultipartUpload on the local S3 server, presigning).
    to_last_part: Option<f64>,
    completing: Option<f64>,
}

fn phases(logs: &str) -> (Option<f64>, Option<f64>) {
    let times = support::logs::LogTimes::parse(logs);
    let first = times.first("download requested");
    let (last_part, done) = (times.last("part uploaded"), times.last("download finished"));
    (
        last_part.zip(first).map(|(p, f)| p - f),
        done.zip(last_part).map(|(d, p)| d - p),
    )
}

/// What the stub needs to play a `bench-` track of `delay` seconds.
fn stub_settings(delay: f64) -> [(&'static str, String); 3] {
    [
        ("SCDL_STUB_DELAY", delay.to_string()),
        ("SCDL_STUB_SIZE", TRACK_BYTES.to_string()),
        (
            "SCDL_STUB_CACHE",
            support::stub::bench_cache(TRACK_BYTES).to_owned(),
        ),
    ]
}

fn bench_url(i: usize) -> String {
    format!("https://soundcloud.com/bench/bench-{i}")
}

async fn run_batch(s3: &S3Server, tracks: usize, delay: f64, watch: Watch) -> Run {
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut env = s3.env();
    env.extend(support::stub::stub_env());
    let stub = support::stub::stub_scdl();
    let owned = [
        ("SCDL_BIN", stub.to_str().unwrap().to_owned()),
        ("TMPDIR", tmp.path().to_str().unwrap().to_owned()),
        ("DOWNLOAD_CONCURRENCY", CONCURRENCY.to_string()),
        ("MAX_TRACKS", tracks.to_string()),
        ("TRACK_TIMEOUT_SECONDS", "120".to_owned()),
        ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID.to_owned()),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9".to_owned()),
        (
            "AWS_LAMBDA_LOG_LEVEL",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ];
    env.extend(owned.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env.extend(stub_settings(delay).map(|(k, v)| (k.to_owned(), v)));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lambda = spawn_function(&workspace_bin("xomcloud-download-tracks"), &runtime, &refs);
    let tree = watch
        .memory
        .then(|| PeakTree::start(lambda.id(), TREE_EVERY));
    let list: Vec<Value> = (0..tracks)
        .map(|i| json!({"id": i.to_string(), "url": bench_url(i), "title": format!("Track {i}"), "artist": "Bench"}))
        .collect();
    let event = json!({
        "version": "2.0", "routeKey": "POST /download", "rawPath": "/download", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/download", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
                           "authorizer": {"lambda": {"sub": "bench"}}, "requestId": "bench", "routeKey": "POST /download", "stage": "$default"},
        "body": json!({"tracks": list}).to_string(), "isBase64Encoded": false
    });
    let watcher = watch.temp_dir.then(|| watch_dir(tmp.path()));
    let started = Instant::now();
    let outcome = runtime
        .invoke_with_timeout(event, Duration::from_secs(600))
        .await;
    let wall = started.elapsed();
    let peak_temp = watcher.map_or(0, |(stop, handle)| {
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap()
    });
    // Stopped while the function still waits for its next event, so its VmHWM is readable.
    let memory = tree.map(PeakTree::stop);
    let response = outcome.response();
    assert_eq!(response["statusCode"], 200, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"]["successful"], tracks, "{body}");
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", lambda.logs());
    }
    let (to_last_part, completing) = phases(&lambda.logs());
    Run {
        wall,
        peak_temp,
        memory,
        to_last_part,
        completing,
    }
}

/// The stubs alone, run the way the pipeline runs them: `tracks` runs of the `bench-` stub with
/// the pipeline's own argument vector and per-track HOME, `CONCURRENCY` at once (the next one
/// starts as soon as one exits), each into a directory made beforehand. Wall time from the
/// first start to the last exit, in seconds: the least any pipeline could take for the fetches
/// on this machine at this moment, the stubs' contention with each other included.
fn stubs_alone(tracks: usize, delay: f64) -> f64 {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..tracks {
        for sub in ["out", "home"] {
            std::fs::create_dir_all(dir.path().join(i.to_string()).join(sub)).unwrap();
        }
    }
    let stub = support::stub::stub_scdl();
    let settings = stub_settings(delay);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENCY {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tracks {
                    break;
                }
                let track = dir.path().join(i.to_string());
                let home = track.join("home");
                let args = xomcloud_download_tracks::scdl::scdl_args(
                    &bench_url(i),
                    &track.join("out"),
                    Some(CLIENT_ID),
                );
                let status = std::process::Command::new(&stub)
                    .args(args)
                    .envs(settings.iter().map(|(k, v)| (k, v)))
                    .env("HOME", &home)
                    .env("XDG_CONFIG_HOME", home.join(".config"))
                    .env("XDG_CACHE_HOME", home.join(".cache"))
                    .env("XDG_DATA_HOME", &home)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .process_group(0)
                    .status()
                    .unwrap();
                assert!(status.success(), "the stub alone failed: {status}");
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let out = dir.path().join("0/out/track.mp3");
    assert_eq!(
        std::fs::metadata(&out).map(|m| m.len()).ok(),
        Some(TRACK_BYTES),
        "{}",
        out.display()
    );
    wall
}

/// The local S3 server's own share of scenario 1, without the pipeline: `bytes` uploaded as
/// 5 MiB parts by the storage adapter, then CompleteMultipartUpload timed alone (s3s-fs
/// re-reads, MD5s and copies every part into one file), in seconds.
async fn s3_completion_alone(s3: &S3Server, bytes: u64, key: &str) -> f64 {
    use aws_sdk_s3::config::{Credentials, Region};
    use xomcloud_common::storage::{Part, S3Storage, Storage};
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&s3.endpoint)
        .region(Region::new(support::s3::REGION))
        .credentials_provider(Credentials::new(
            support::s3::ACCESS_KEY,
            support::s3::SECRET_KEY,
            None,
            None,
            "bench",
        ))
        .load()
        .await;
    let storage = S3Storage::new(&sdk, support::s3::BUCKET, true);
    let upload = storage.create_upload(key).await.unwrap();
    let (mut offset, mut number) = (0, 1);
    while offset < bytes {
        let len = PART_BYTES.min(bytes - offset);
        let data = bytes::Bytes::from(vec![0x5a; len as usize]);
        upload
            .put_part(Part {
                number,
                offset,
                data,
            })
            .await
            .unwrap();
        (offset, number) = (offset + len, number + 1);
    }
    // Written back first, so the figure is the completion's alone (a lower bound: in the run
    // the last parts are still dirty when it starts).
    let _ = std::process::Command::new("sync").status();
    let started = Instant::now();
    upload.complete().await.unwrap();
    started.elapsed().as_secs_f64()
}

/// Scenario 1.
async fn first_scenario(s3: &S3Server, verdicts: &mut Verdicts) {
    const TRACKS: usize = 20;
    const DELAY: f64 = 1.0;
    let floor = floor(TRACKS, DELAY);
    println!(
        "{TRACKS} tracks × 5 MB, {DELAY:.0} s each, concurrency {CONCURRENCY} (floor {floor:.0} s), {FIRST_RUNS} runs; beside each, the harness alone measured the way the run uses it ({TRACKS} stub runs with the pipeline's arguments, {CONCURRENCY} at once; CompleteMultipartUpload of the same {:.0} MB on the same S3 server):",
        mb(TRACKS as u64 * TRACK_BYTES)
    );
    let mut within = 0;
    for run in 1..=FIRST_RUNS {
        let a = run_batch(s3, TRACKS, DELAY, Watch::default()).await;
        let stubs = tokio::task::spawn_blocking(move || stubs_alone(TRACKS, DELAY))
            .await
            .unwrap();
        let key = format!("bench/completion-{run}.zip");
        let completion = s3_completion_alone(s3, TRACKS as u64 * TRACK_BYTES, &key).await;
        // Keeps the S3 server's disk from growing run after run.
        let _ = std::fs::remove_dir_all(s3.object_path("bench"));
        let wall = a.wall.as_secs_f64();
        let harness = stubs + completion;
        let share = (wall - harness) / floor;
        let ok = share <= SHARE_TARGET;
        within += usize::from(ok);
        let phases = match (a.to_last_part, a.completing) {
            (Some(pipeline), Some(completing)) => format!(
                " (request → last part uploaded {pipeline:.2} s, last part → answer {completing:.2} s)"
            ),
            _ => String::new(),
        };
        println!(
            "  run {run}: wall {wall:.2} s = {:.3} × floor{phases}; the harness alone {harness:.2} s = {:.3} × floor (stubs {stubs:.2} s + completion {completion:.2} s); our share {:.0} ms = {:.1} % of floor [{} ≤ {:.0} %]",
            wall / floor,
            harness / floor,
            (wall - harness) * 1e3,
            share * 100.0,
            verdict(ok),
            SHARE_TARGET * 100.0
        );
    }
    println!(
        "  our share ≤ {:.0} % of floor in {within}/{FIRST_RUNS} runs [{} {FIRST_RUNS}/{FIRST_RUNS}]; {}",
        SHARE_TARGET * 100.0,
        verdicts.check(within == FIRST_RUNS),
        load()
    );
}

/// The function's peak RSS with its verdict, then its process tree's peak; or why /proc could
/// not tell (a FAIL).
fn memory_figures(memory: &Result<TreePeak, String>, verdicts: &mut Verdicts) -> String {
    match memory {
        Ok(m) => format!(
            "peak RSS {:.1} MB (the function's VmHWM) [{} ≤ {:.0} MB]; its process tree {:.1} MB (the function and its scdl runs, up to {} processes, sampled every {} ms)",
            mb(m.own_peak),
            verdicts.check(m.own_peak <= RSS_TARGET),
            mb(RSS_TARGET),
            mb(m.tree_peak),
            m.max_processes,
            TREE_EVERY.as_millis()
        ),
        Err(reason) => format!(
            "peak RSS unreadable ({reason}) [{} ≤ {:.0} MB]",
            verdicts.check(false),
            mb(RSS_TARGET)
        ),
    }
}

/// The function's own peak when it was measured.
fn own_peak(run: &Run) -> Option<u64> {
    run.memory.as_ref()?.as_ref().ok().map(|m| m.own_peak)
}

fn floor(tracks: usize, delay: f64) -> f64 {
    tracks.div_ceil(CONCURRENCY) as f64 * delay
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MB as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn authorizer(verdicts: &mut Verdicts) {
    // Cold start: process exec → first response, through the Runtime API; median of 20.
    let bin = workspace_bin("xomcloud-authorizer");
    let token = xomcloud_authorizer::jwt::mint("bench-user", b"bench-secret", 3600).unwrap();
    let event = json!({"type": "TOKEN", "authorizationToken": format!("Bearer {token}"),
                       "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/POST/download"});
    let mut colds = Vec::new();
    for _ in 0..20 {
        let runtime = RuntimeApi::start().await;
        let started = Instant::now();
        let _lambda = spawn_function(
            &bin,
            &runtime,
            &[
                ("API_SECRET_KEY", "bench-secret"),
                ("AWS_LAMBDA_LOG_LEVEL", "warn"),
            ],
        );
        let outcome = runtime.invoke(event.clone()).await;
        colds.push(started.elapsed());
        assert_eq!(outcome.response()["principalId"], "bench-user");
    }
    colds.sort();
    let cold = percentile(&colds, 0.5);

    // Warm: the handler in-process (event parsing, secret lookup, HS256 check, policy).
    let secrets = xomcloud_common::config::Secrets::new("/xomcloud").source(
        xomcloud_common::config::EnvSecrets::default().with(
            xomcloud_common::config::Secret::ApiSecretKey,
            "bench-secret",
        ),
    );
    let authorizer =
        xomcloud_authorizer::Authorizer::new(secrets, xomcloud_authorizer::Rules::default());
    let mut warm = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let started = Instant::now();
        let answer = authorizer.handle(event.clone()).await;
        warm.push(started.elapsed());
        assert!(answer.is_ok());
    }
    warm.sort();
    let (p50, p99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
    println!(
        "authorizer: cold start {:.1} ms (median of 20) [{} ≤ 20 ms]; warm p50 {:.1} µs, p99 {:.1} µs over 10000 [{} p99 ≤ 1 ms]",
        cold.as_secs_f64() * 1e3,
        verdicts.check(cold <= Duration::from_millis(20)),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        verdicts.check(p99 <= Duration::from_millis(1)),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut verdicts = Verdicts::default();
    runtime.block_on(async {
        println!(
            "machine: {} cores; {}; {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            load()
        );
        let s3 = S3Server::start().await;
        first_scenario(&s3, &mut verdicts).await;
        if std::env::var_os("BENCH_FIRST_ONLY").is_some() {
            return;
        }

        let watch = Watch {
            temp_dir: true,
            memory: true,
        };
        let b = run_batch(&s3, 200, 0.1, watch).await;
        let ratio = b.wall.as_secs_f64() / floor(200, 0.1);
        let temp_limit = CONCURRENCY as u64 * TRACK_BYTES + PART_BYTES;
        let memory = memory_figures(b.memory.as_ref().expect("watched"), &mut verdicts);
        println!(
            "200 tracks × 5 MB, 0.1 s each: wall {:.2} s, wall/floor {ratio:.3}; {memory}; peak temp dir {:.1} MB [{} ≤ {:.1} MB]",
            b.wall.as_secs_f64(),
            mb(b.peak_temp),
            verdicts.check(b.peak_temp <= temp_limit),
            mb(temp_limit)
        );

        let watch = Watch {
            temp_dir: false,
            memory: true,
        };
        let mut runs = Vec::new();
        for n in [5, 50, 200] {
            runs.push((n, run_batch(&s3, n, 0.0, watch).await));
        }
        let figures: Vec<String> = runs
            .iter()
            .map(|(n, r)| match r.memory.as_ref().expect("watched") {
                Ok(m) => format!(
                    "{n}: {:.1} MB (tree {:.1} MB)",
                    mb(m.own_peak),
                    mb(m.tree_peak)
                ),
                Err(reason) => format!("{n}: unreadable ({reason})"),
            })
            .collect();
        let peaks: Vec<u64> = runs.iter().filter_map(|(_, r)| own_peak(r)).collect();
        let verdict_line = if peaks.len() == runs.len() {
            let (max, min) = (*peaks.iter().max().unwrap(), *peaks.iter().min().unwrap());
            // Flat: the largest batch needs at most 25% more than the smallest.
            let spread = max as f64 / min as f64;
            format!(
                "[{} ≤ {:.0} MB] [{} flat in N: max/min {spread:.2} ≤ {FLAT_TARGET:.2}]",
                verdicts.check(max <= RSS_TARGET),
                mb(RSS_TARGET),
                verdicts.check(spread <= FLAT_TARGET),
            )
        } else {
            format!("[{} not measured]", verdicts.check(false))
        };
        println!(
            "peak RSS by batch size (× 5 MB; the function's VmHWM, its process tree's sampled peak): {} {verdict_line}",
            figures.join(", "),
        );

        authorizer(&mut verdicts).await;
    });
    if verdicts.failed {
        println!("pipeline: a target FAILED");
        std::process::exit(1);
    }
}

/// The load average, to read the timings by: other work on the machine slows the stubs, the
/// S3 server and the pipeline alike.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| format!("load average {}", f.join(" ")))
        })
        .unwrap_or_else(|| "load average unknown".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}
