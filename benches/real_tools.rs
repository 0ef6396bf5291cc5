//! Memory of the whole process tree with the real tools (run: `scripts/bench.sh`, or
//! `cargo bench --bench real_tools` after `cargo build --release -p xomcloud-download-tracks`):
//! the release download Lambda, driven through the Lambda Runtime API, runs the pinned scdl +
//! yt-dlp from `.venv` and ffmpeg against the SoundCloud API served by `support::soundcloud_api`
//! (as in `tests/real_scdl_e2e.rs`), for a request of 5 three-minute tracks: three HLS MP3s, one
//! progressive MP3, one AAC (transcoded to MP3 by our ffmpeg). `support::proctree` samples the
//! function and all its descendants. Prints the figures and PASS/FAIL against the target; a FAIL
//! (or `/proc` unreadable) exits 1.

#[path = "../tests/support/mod.rs"]
mod support;

use support::bench::verdict;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::bins::{tools_bin, workspace_bin};
use support::proctree::PeakTree;
use support::runtime_api::{spawn_function, RuntimeApi};
use support::s3::S3Server;
use support::soundcloud_api::SoundCloudApi;

const MB: u64 = 1024 * 1024;
/// The download function's memory setting (`template.yaml`).
const FUNCTION_MB: u64 = 1024;
/// "Well under" the function's memory: half of it.
const TARGET_MB: u64 = 512;
const TRACK_SECONDS: u32 = 180;
/// SoundCloud's HLS segments are about 10 s long.
const SEGMENTS: usize = 18;
const RUNS: usize = 3;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MB as f64
}

/// A `TRACK_SECONDS` sine made by ffmpeg with `codec` args (made once per run of the bench).
fn track_file(dir: &Path, name: &str, codec: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let duration = format!("sine=frequency=440:duration={TRACK_SECONDS}");
    let out = Command::new(support::media::ffmpeg())
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &duration, "-ac", "2", "-ar", "44100"])
        .args(codec)
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("start ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("the made track")
}

fn event(body: &Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/download/rest-v1.json");
    let text = std::fs::read_to_string(path)
        .expect("the event fixture")
        .replace("__PRINCIPAL__", "bench");
    let mut event: Value = serde_json::from_str(&text).expect("a JSON fixture");
    event["body"] = json!(body.to_string());
    event
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(async {
        let media = tempfile::tempdir().unwrap();
        let mp3 = track_file(media.path(), "t.mp3", &["-c:a", "libmp3lame", "-b:a", "128k"]);
        let m4a = track_file(media.path(), "t.m4a", &["-c:a", "aac", "-b:a", "160k", "-f", "ipod"]);
        let api = SoundCloudApi::start(mp3.clone(), m4a.clone(), SEGMENTS).await;
        let s3 = S3Server::start().await;
        let lambda_api = RuntimeApi::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let pids = tmp.path().join("python-pids");
        let temp_root = tmp.path().join("tmp");
        std::fs::create_dir(&temp_root).unwrap();
        let mut env = s3.env();
        env.extend(api.scdl_env(&pids));
        for (k, v) in [
            ("SCDL_BIN", tools_bin("scdl").to_str().unwrap()),
            ("TMPDIR", temp_root.to_str().unwrap()),
            ("SOUNDCLOUD_CLIENT_ID", "bench-client-id"),
            ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            env.push((k.into(), v.into()));
        }
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let lambda = spawn_function(&workspace_bin("xomcloud-download-tracks"), &lambda_api, &refs);
        println!(
            "machine: {} cores; 5 tracks × {TRACK_SECONDS} s ({:.1} MB MP3 as {SEGMENTS} HLS segments ×3, progressive ×1; {:.1} MB AAC ×1), concurrency 4",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            mib(mp3.len() as u64),
            mib(m4a.len() as u64),
        );
        let slugs = ["ok-hls-a", "ok-hls-b", "ok-hls-c", "ok-progressive-d", "m4a-e"];
        let mut all_ok = true;
        let mut worst = 0u64;
        for run in 1..=RUNS {
            let tracks: Vec<Value> = slugs
                .iter()
                .enumerate()
                .map(|(i, slug)| json!({"id": i.to_string(), "url": format!("https://soundcloud.com/bench/{slug}-{run}"), "title": format!("Track {i}"), "artist": "Bench"}))
                .collect();
            let tree = PeakTree::start(lambda.id(), Duration::from_millis(5));
            let started = Instant::now();
            let response = lambda_api.invoke(event(&json!({ "tracks": tracks }))).await.response();
            let wall = started.elapsed();
            let peak = tree.stop();
            let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
            let successful = body["data"]["successful"].as_u64().unwrap_or(0);
            if successful != 5 {
                println!("run {run}: FAIL: {successful} of 5 tracks downloaded: {body}\n{}", lambda.logs());
                all_ok = false;
                continue;
            }
            match peak {
                Ok(p) => {
                    worst = worst.max(p.tree_peak);
                    println!(
                        "run {run}: wall {:.2} s; process tree peak RSS {:.1} MiB (the function alone {:.1} MiB; up to {} processes at once; {} samples)",
                        wall.as_secs_f64(),
                        mib(p.tree_peak),
                        mib(p.own_peak),
                        p.max_processes,
                        p.samples
                    );
                }
                Err(why) => {
                    println!("run {run}: FAIL: no memory figure: {why}");
                    all_ok = false;
                }
            }
        }
        let served = api.received().len();
        let pass = all_ok && worst > 0 && worst <= TARGET_MB * MB;
        println!(
            "whole process tree (function + scdl/yt-dlp/ffmpeg), worst of {RUNS} runs: {:.1} MiB of the function's {FUNCTION_MB} MB [{} ≤ {TARGET_MB} MiB]; the fake SoundCloud served {served} requests",
            mib(worst),
            verdict(pass)
        );
        pass
    });
    if !ok {
        std::process::exit(1);
    }
}
