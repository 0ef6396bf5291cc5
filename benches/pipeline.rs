//! Benchmarks with targets (run: `scripts/bench.sh`). The release Lambda binaries are driven
//! through the Lambda Runtime API exactly as in production, with S3 = in-process s3s-fs and scdl
//! replaced by the stub with a set delay and file size. Prints one line per scenario, with
//! PASS/FAIL beside each target.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::bins::workspace_bin;
use support::runtime_api::{spawn_function, RuntimeApi};
use support::s3::S3Server;

const MB: u64 = 1_000_000;
const TRACK_BYTES: u64 = 5 * MB;
const CONCURRENCY: usize = 4;
const PART_BYTES: u64 = 5 * 1024 * 1024;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Peak resident set of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

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

struct Run {
    wall: Duration,
    peak_rss: u64,
    peak_temp: u64,
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

/// `watch`: sample the temp dir's size (costs the harness CPU, which the function under test
/// would feel on a small machine: only where the figure is wanted).
async fn run_batch(s3: &S3Server, tracks: usize, delay: f64, watch: bool) -> Run {
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut env = s3.env();
    env.extend(support::stub::stub_env());
    let stub = support::stub::stub_scdl();
    let owned = [
        ("SCDL_BIN", stub.to_str().unwrap().to_owned()),
        ("SCDL_STUB_DELAY", delay.to_string()),
        ("SCDL_STUB_SIZE", TRACK_BYTES.to_string()),
        ("TMPDIR", tmp.path().to_str().unwrap().to_owned()),
        ("DOWNLOAD_CONCURRENCY", CONCURRENCY.to_string()),
        ("MAX_TRACKS", tracks.to_string()),
        ("TRACK_TIMEOUT_SECONDS", "120".to_owned()),
        (
            "SCDL_STUB_CACHE",
            support::stub::bench_cache(TRACK_BYTES).to_owned(),
        ),
        ("SOUNDCLOUD_CLIENT_ID", "bench-client-id".to_owned()),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9".to_owned()),
        (
            "AWS_LAMBDA_LOG_LEVEL",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ];
    env.extend(owned.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lambda = spawn_function(&workspace_bin("xomcloud-download-tracks"), &runtime, &refs);
    let list: Vec<Value> = (0..tracks)
        .map(|i| json!({"id": i.to_string(), "url": format!("https://soundcloud.com/bench/bench-{i}"), "title": format!("Track {i}"), "artist": "Bench"}))
        .collect();
    let event = json!({
        "version": "2.0", "routeKey": "POST /download", "rawPath": "/download", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/download", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
                           "authorizer": {"lambda": {"sub": "bench"}}, "requestId": "bench", "routeKey": "POST /download", "stage": "$default"},
        "body": json!({"tracks": list}).to_string(), "isBase64Encoded": false
    });
    let watcher = watch.then(|| watch_dir(tmp.path()));
    let started = Instant::now();
    let outcome = runtime
        .invoke_with_timeout(event, Duration::from_secs(600))
        .await;
    let wall = started.elapsed();
    let peak_temp = watcher.map_or(0, |(stop, handle)| {
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap()
    });
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
        peak_rss: peak_rss(lambda.id()),
        peak_temp,
        to_last_part,
        completing,
    }
}

/// The local S3 server's own share of scenario 1, without the pipeline: the same bytes uploaded
/// as 5 MiB parts by the storage adapter, then CompleteMultipartUpload timed alone (s3s-fs
/// re-reads, MD5s and copies every part into one file). Median of 3, in seconds.
async fn s3_completion_alone(s3: &S3Server, bytes: u64) -> f64 {
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
    let mut times = Vec::new();
    for run in 0..3 {
        let upload = storage
            .create_upload(&format!("bench/completion-{run}.zip"))
            .await
            .unwrap();
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
        let started = Instant::now();
        upload.complete().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    percentile(&times, 0.5).as_secs_f64()
}

/// The stub's own cost per run beyond its delay: process start to exit with delay 0 on an idle
/// machine (a lower bound: under load it is slower). Median of 10, in seconds.
fn stub_cost_alone() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for run in 0..10 {
        let out = dir.path().join(run.to_string());
        let started = Instant::now();
        let status = std::process::Command::new(support::stub::stub_scdl())
            .args([
                "-l",
                &format!("https://soundcloud.com/bench/bench-{run}"),
                "--path",
            ])
            .arg(&out)
            .env("HOME", dir.path())
            .env("SCDL_STUB_SIZE", TRACK_BYTES.to_string())
            .env("SCDL_STUB_CACHE", support::stub::bench_cache(TRACK_BYTES))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        times.push(started.elapsed());
        assert!(status.success());
    }
    times.sort();
    percentile(&times, 0.5).as_secs_f64()
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

async fn authorizer() {
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
        verdict(cold <= Duration::from_millis(20)),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        verdict(p99 <= Duration::from_millis(1)),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("machine: {} cores; {}", std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model());
        let s3 = S3Server::start().await;

        let a = run_batch(&s3, 20, 1.0, false).await;
        let ratio = a.wall.as_secs_f64() / floor(20, 1.0);
        println!(
            "20 tracks × 5 MB, 1 s each, concurrency 4: wall {:.2} s, floor {:.0} s, wall/floor {ratio:.3} [{} ≤ 1.05]",
            a.wall.as_secs_f64(),
            floor(20, 1.0),
            verdict(ratio <= 1.05)
        );
        if let (Some(pipeline), Some(completing)) = (a.to_last_part, a.completing) {
            println!(
                "  of which: request → last part uploaded {pipeline:.2} s ({:.3} × floor); last part → answer {completing:.2} s (the local S3 server assembling the object, presigning)",
                pipeline / floor(20, 1.0)
            );
        }
        // What this harness costs by itself: the least wall time any pipeline could show here.
        let rounds = 20usize.div_ceil(CONCURRENCY) as f64;
        let (stub, completion) = (stub_cost_alone(), s3_completion_alone(&s3, 20 * TRACK_BYTES).await);
        let harness = floor(20, 1.0) + rounds * stub + completion;
        println!(
            "  the harness alone: stub {:.0} ms per run × {rounds:.0} rounds + the S3 server completing {:.0} MB {completion:.2} s = {harness:.2} s ({:.3} × floor); the pipeline's own overhead above that: {:.2} s ({:.1}% of floor)",
            stub * 1e3,
            mb(20 * TRACK_BYTES),
            harness / floor(20, 1.0),
            a.wall.as_secs_f64() - harness,
            (a.wall.as_secs_f64() - harness) / floor(20, 1.0) * 100.0
        );

        if std::env::var_os("BENCH_FIRST_ONLY").is_some() {
            return;
        }
        let b = run_batch(&s3, 200, 0.1, true).await;
        let ratio = b.wall.as_secs_f64() / floor(200, 0.1);
        let temp_limit = CONCURRENCY as u64 * TRACK_BYTES + PART_BYTES;
        println!(
            "200 tracks × 5 MB, 0.1 s each: wall {:.2} s, wall/floor {ratio:.3}; peak RSS {:.1} MB [{} ≤ 64 MB]; peak temp dir {:.1} MB [{} ≤ {:.1} MB]",
            b.wall.as_secs_f64(),
            mb(b.peak_rss),
            verdict(b.peak_rss <= 64 * MB),
            mb(b.peak_temp),
            verdict(b.peak_temp <= temp_limit),
            mb(temp_limit)
        );

        let mut rss = Vec::new();
        for n in [5, 50, 200] {
            rss.push((n, run_batch(&s3, n, 0.0, false).await.peak_rss));
        }
        let max = rss.iter().map(|(_, r)| *r).max().unwrap();
        let min = rss.iter().map(|(_, r)| *r).min().unwrap();
        // Flat: the largest batch needs at most 25% more than the smallest.
        let flat = max as f64 <= min as f64 * 1.25;
        let figures: Vec<String> = rss.iter().map(|(n, r)| format!("{n}: {:.1} MB", mb(*r))).collect();
        println!(
            "peak RSS by batch size (× 5 MB): {} [{} ≤ 64 MB] [{} flat in N: max/min {:.2} ≤ 1.25]",
            figures.join(", "),
            verdict(max <= 64 * MB),
            verdict(flat),
            max as f64 / min as f64
        );

        authorizer().await;
    });
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}
