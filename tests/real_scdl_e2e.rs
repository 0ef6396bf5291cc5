//! End to end with the real tools: the compiled `xomcloud-download-tracks` Lambda runs the pinned
//! scdl + yt-dlp from `.venv` (and ffmpeg) against a SoundCloud API served by this test
//! (`support::soundcloud_api`, reached through `tests/fixtures/real_scdl/sitecustomize.py`), and
//! the same request through the scdl stub must come out the same: the same files in the zip, the
//! same plain-words reasons. Nothing reaches the network: the fake records what it served.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::bins::{tools_bin, workspace_bin};
use support::runtime_api::{spawn_function, LambdaProcess, RuntimeApi};
use support::s3::S3Server;
use support::soundcloud_api::{hostile_title, SoundCloudApi};

const CLIENT_ID: &str = "real-scdl-client-id-7c41";

/// Which scdl the function runs (both expand short links at `api`'s `/on/`).
enum Tools<'a> {
    Stub {
        api: &'a SoundCloudApi,
    },
    Real {
        api: &'a SoundCloudApi,
        pids: &'a Path,
    },
}

struct Lambda {
    s3: S3Server,
    runtime: RuntimeApi,
    lambda: LambdaProcess,
    tmp: tempfile::TempDir,
}

async fn lambda(tools: Tools<'_>) -> Lambda {
    let s3 = S3Server::start().await;
    let runtime = RuntimeApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = s3.env();
    match tools {
        Tools::Stub { api } => {
            env.extend(support::stub::stub_env());
            env.push(("SOUNDCLOUD_SHORT_LINK_BASE".into(), api.short_link_base()));
            let stub = support::stub::stub_scdl();
            env.push(("SCDL_BIN".into(), stub.to_str().unwrap().into()));
        }
        Tools::Real { api, pids } => {
            // Panics with `scripts/setup.sh --test` when the pinned tools are not installed.
            let scdl = tools_bin("scdl");
            env.push(("SCDL_BIN".into(), scdl.to_str().unwrap().into()));
            env.extend(api.scdl_env(pids));
        }
    }
    for (k, v) in [
        ("TMPDIR", tmp.path().to_str().unwrap()),
        ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
        // Generous: a slow CI machine must not turn a case into "Timed out".
        ("TRACK_TIMEOUT_SECONDS", "90"),
        ("MAX_TRACKS", "12"),
        // Nothing may reach AWS: SSM points at a closed local port.
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.push((k.into(), v.into()));
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lambda = spawn_function(&workspace_bin("xomcloud-download-tracks"), &runtime, &refs);
    Lambda {
        s3,
        runtime,
        lambda,
        tmp,
    }
}

/// A REST API event (`tests/fixtures/download/rest-v1.json`) carrying `body`.
fn event(body: &Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/download/rest-v1.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("__PRINCIPAL__", "real_tools");
    let mut event: Value = serde_json::from_str(&text).unwrap();
    event["body"] = json!(body.to_string());
    event
}

/// What one run gave: the answer's `data` and the zip's entries.
struct Answer {
    data: Value,
    entries: Vec<(String, Vec<u8>)>,
}

/// Invokes `function` with `body`, fetches the zip, and checks that nothing was left behind:
/// an empty temp dir and no unfinished upload.
async fn download(function: &Lambda, body: &Value) -> Answer {
    let response = function.runtime.invoke(event(body)).await.response();
    let status = response["statusCode"].as_u64().unwrap();
    let parsed: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(status, 200, "{parsed}\n{}", function.lambda.logs());
    let data = parsed["data"].clone();
    let zip = reqwest::get(data["download_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(zip.status(), 200);
    let entries = support::zips::entries(&zip.bytes().await.unwrap());
    let left: Vec<PathBuf> = std::fs::read_dir(function.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert!(
        function.s3.pending_uploads().is_empty(),
        "an upload was left open"
    );
    Answer { data, entries }
}

fn track(id: &str, slug: &str, title: &str) -> Value {
    json!({"id": id, "url": format!("https://soundcloud.com/fake-artist/{slug}"), "title": title, "artist": "Fake Artist"})
}

/// id → reason of the answer's `failed`.
fn reasons(data: &Value) -> Vec<(String, String)> {
    data["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn is_mp3(bytes: &[u8]) -> bool {
    bytes.starts_with(b"ID3") || (bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
}

/// The MPEG audio frames of an MP3 file: what follows its ID3v2 tag, if any.
fn audio_frames(mp3: &[u8]) -> &[u8] {
    if mp3.len() > 10 && mp3.starts_with(b"ID3") {
        // Four syncsafe bytes (7 bits each) after "ID3", version and flags.
        let size = mp3[6..10]
            .iter()
            .fold(0usize, |n, &b| (n << 7) | usize::from(b & 0x7f));
        &mp3[(10 + size).min(mp3.len())..]
    } else {
        mp3
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Live (non-zombie) processes whose parent is `pid`.
fn live_children(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            fields.len() > 1 && fields[1] == pid.to_string() && fields[0] != "Z"
        })
        .collect()
}

const NOT_FOUND: &str = "Track not found (deleted, private or a wrong URL)";
const GEO: &str = "Not available in your country";
const PREVIEW: &str = "Only a 30-second preview is available (SoundCloud Go+ track)";
const RATE_LIMITED: &str = "Rate limited by SoundCloud; try again later";
const STREAM_FAILED: &str = "The audio stream failed to download; try again later";

#[tokio::test(flavor = "multi_thread")]
async fn the_real_scdl_against_a_fake_soundcloud_answers_as_the_stub_does() {
    let mp3 = std::fs::read(support::media::sample_mp3()).unwrap();
    let m4a = std::fs::read(support::media::sample_m4a()).unwrap();
    let api = SoundCloudApi::start(mp3.clone(), m4a, 3).await;
    let work = tempfile::tempdir().unwrap();
    let pids = work.path().join("python-pids");
    let hostile = hostile_title();
    let body = json!({"tracks": [
        track("1", "ok-hls-first", "First Song"),
        track("2", "ok-progressive-second", "Second Song"),
        track("3", "m4a-third", "Third Song"),
        track("4", "notfound-fourth", "Gone"),
        track("5", "geo-fifth", "Blocked"),
        track("6", "preview-sixth", "Go Plus"),
        track("7", "ratelimit-stream-seventh", "Slow Stream"),
        track("8", "ratelimit-segment-eighth", "Slow Segment"),
        track("9", "ratelimit-resolve-ninth", "Slow Resolve"),
        track("10", "broken-tenth", "Broken Segment"),
        track("11", "ok-hostile-eleventh", &hostile),
        // A short link (what the app's Share button copies): fetched where it leads.
        {"id": "12", "url": "https://on.soundcloud.com/t-ok-short-twelfth",
         "title": "Short Link", "artist": "Fake Artist"},
    ]});

    let real_fn = lambda(Tools::Real {
        api: &api,
        pids: &pids,
    })
    .await;
    let stub_fn = lambda(Tools::Stub { api: &api }).await;
    let (real, stub) = tokio::join!(download(&real_fn, &body), download(&stub_fn, &body));

    // The real tools' answer, case by case.
    let data = &real.data;
    assert_eq!(data["total"], 12, "{data}");
    let downloaded: Vec<&str> = data["tracks_downloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(downloaded, ["1", "2", "3", "11", "12"], "{data}");
    let expected = [
        ("4", NOT_FOUND),
        ("5", GEO),
        ("6", PREVIEW),
        ("7", RATE_LIMITED),
        ("8", RATE_LIMITED),
        ("9", RATE_LIMITED),
        ("10", STREAM_FAILED),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(id, why)| (id.to_string(), why.to_string()))
        .collect();
    assert_eq!(reasons(data), expected, "{data}");

    // Exactly what the stub gives for the same request.
    for key in [
        "total",
        "successful",
        "failed_count",
        "failed",
        "tracks_downloaded",
    ] {
        assert_eq!(real.data[key], stub.data[key], "{key}");
    }
    // Entries are appended as tracks finish: compare them as sets.
    let names = |a: &Answer| {
        a.entries
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&real), names(&stub));
    let mut plain = names(&real);
    for name in [
        "Fake Artist - First Song.mp3",
        "Fake Artist - Second Song.mp3",
        "Fake Artist - Third Song.mp3",
        "Fake Artist - Short Link.mp3",
    ] {
        assert!(plain.remove(name), "{name} missing: {:?}", names(&real));
    }
    assert_eq!(plain.len(), 1, "{plain:?}");
    let hostile_name = plain.first().unwrap();
    let capped: String = hostile
        .chars()
        .take(xomcloud_download_tracks::validate::MAX_TEXT_CHARS)
        .collect();
    assert_eq!(
        hostile_name,
        &xomcloud_download_tracks::naming::entry_name("Fake Artist", &capped, "11")
    );
    assert!(
        hostile_name.ends_with(".mp3")
            && hostile_name.chars().count() <= 150 + ".mp3".len()
            && !hostile_name.contains(['/', '\\'])
            && !hostile_name.chars().any(char::is_control),
        "{hostile_name:?}"
    );

    // The bytes came through the fake's HLS segments and progressive file intact (scdl adds its
    // own ID3 tag); the AAC track was transcoded to MP3.
    let frames = audio_frames(&mp3);
    for (name, bytes) in &real.entries {
        assert!(is_mp3(bytes), "{name} is not an MP3");
        if !name.contains("Third Song") {
            assert!(contains(bytes, frames), "{name} lacks the served audio");
        }
    }

    // The fake saw the whole conversation, with our client id on every API call.
    let seen = api.received();
    let requested = |needle: &str| seen.iter().filter(|r| r.contains(needle)).count();
    assert!(
        requested(&format!("GET /tracks/1032303631?client_id={CLIENT_ID}")) >= 12,
        "scdl's client-id check, once per run: {seen:#?}"
    );
    for slug in [
        "ok-hls-first",
        "ok-progressive-second",
        "m4a-third",
        "notfound-fourth",
        "geo-fifth",
        "preview-sixth",
        "ratelimit-stream-seventh",
        "ratelimit-segment-eighth",
        "ratelimit-resolve-ninth",
        "broken-tenth",
        "ok-hostile-eleventh",
        "ok-short-twelfth",
    ] {
        assert!(
            seen.iter()
                .any(|r| r.starts_with("GET /resolve?") && r.contains(slug)),
            "no resolve of {slug}: {seen:#?}"
        );
    }
    for r in seen
        .iter()
        .filter(|r| r.starts_with("GET /resolve") || r.starts_with("GET /media/"))
    {
        assert!(r.contains(&format!("client_id={CLIENT_ID}")), "{r}");
    }
    for i in 0..3 {
        assert_eq!(requested(&format!("GET /hls/ok-hls-first/{i}.mp3")), 1);
    }
    assert_eq!(requested("GET /file/ok-progressive-second"), 1);
    assert_eq!(requested("GET /file/m4a-third"), 1);
    // The Go+ preview was refused before any of it was fetched; the broken and rate-limited
    // segments were retried, then the track failed (no file with a gap).
    assert_eq!(requested("/playlist/0/30/"), 0, "{seen:#?}");
    assert!(requested("GET /hls/broken-tenth/1.mp3") > 1, "{seen:#?}");
    assert!(requested("GET /hls/ratelimit-segment-eighth/1.mp3") > 1);
    assert!(requested("GET /media/soundcloud:tracks:") > 0);
    // The short link was asked where it leads once by each function; scdl got the address.
    assert_eq!(requested("GET /on/t-ok-short-twelfth"), 2, "{seen:#?}");

    // No process outlived its run: every scdl (Python) process group is gone, and the function
    // has no child left.
    let logged = std::fs::read_to_string(&pids).unwrap_or_default();
    let groups: BTreeSet<i64> = logged
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(logged.lines().count(), 12, "one scdl per track: {logged}");
    assert_eq!(groups.len(), 12, "each in its own process group: {logged}");
    for pgid in groups {
        assert!(!support::stub::group_alive(pgid), "group {pgid} is alive");
    }
    assert_eq!(live_children(real_fn.lambda.id()), Vec::<String>::new());
    assert!(
        !real_fn.lambda.logs().contains(CLIENT_ID),
        "client id in logs"
    );
}
