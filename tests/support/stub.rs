//! The scdl stand-in (`tests/stubs/scdl`, a bash script with scdl 3.0.9's command line) and the
//! environment it needs. Its behaviour is chosen by the URL's last path segment (`ok-`, `m4a-`,
//! `notfound-`, `geo-`, `ratelimit-`, `preview-`, `broken-`, `leak-`, `crash-`, `empty-`,
//! `hang-`, `bench-`): see the comment at the top of the script.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The audio samples the stub copies. Its own copy of the module (no `super::` paths), so this
/// file compiles both as `support::stub` next to `support::media` and when included alone with
/// `#[path]`; the samples are shared on disk, so two copies do not make them twice.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "media.rs"]
pub mod media;

/// Absolute path of `tests/stubs/scdl`; panics unless it is an executable file.
pub fn stub_scdl() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stubs/scdl");
    let meta = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("the scdl stub {} is missing: {e}", path.display()));
    assert!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "the scdl stub {} is not executable: chmod +x it (git records the mode)",
        path.display()
    );
    path
}

/// Variables the stub needs: `SCDL_STUB_MP3` and `SCDL_STUB_M4A` (real audio files), and where
/// short links are expanded (nowhere). Tests add `SCDL_STUB_LOG`, `SCDL_STUB_PIDS`,
/// `SCDL_STUB_DELAY` or `SCDL_STUB_SIZE` when they need them.
pub fn stub_env() -> Vec<(String, String)> {
    let path = |p: &Path| p.to_str().expect("UTF-8 sample path").to_owned();
    vec![
        ("SCDL_STUB_MP3".to_owned(), path(media::sample_mp3())),
        ("SCDL_STUB_M4A".to_owned(), path(media::sample_m4a())),
        // Short links are asked where they lead: at a closed port, never on.soundcloud.com (a
        // test with a fake SoundCloud points it there).
        (
            "SOUNDCLOUD_SHORT_LINK_BASE".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ),
    ]
}

/// The URL of each run the stub logged to `$SCDL_STUB_LOG`, in order.
pub fn logged_urls(log: &Path) -> Vec<String> {
    logged(log)
        .iter()
        .map(|v| {
            let argv = v["argv"].as_array().expect("argv");
            let at = argv.iter().position(|a| a == "-l").expect("-l");
            argv[at + 1].as_str().expect("a URL").to_owned()
        })
        .collect()
}

/// The process group of each run the stub logged.
pub fn logged_pgids(log: &Path) -> Vec<i64> {
    logged(log)
        .iter()
        .map(|v| v["pgid"].as_i64().expect("pgid"))
        .collect()
}

fn logged(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Is any process of the group left (zombies waiting to be reaped do not count)?
pub fn group_alive(pgid: i64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // After the command name: state, ppid, pgrp.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
    })
}

/// A directory for `SCDL_STUB_CACHE` holding the stub's random file of `bytes` (the `bench-`
/// tracks copy it), made once per process before any timed run so the stub's own cost stays out
/// of the figures.
pub fn bench_cache(bytes: u64) -> &'static str {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"));
    let file = dir.path().join(format!("random-{bytes}"));
    if !file.exists() {
        use std::io::Read;
        let mut random = Vec::new();
        std::fs::File::open("/dev/urandom")
            .and_then(|f| f.take(bytes).read_to_end(&mut random))
            .expect("read /dev/urandom");
        std::fs::write(&file, random).expect("write the stub's cache file");
    }
    dir.path().to_str().expect("a UTF-8 temp path")
}
