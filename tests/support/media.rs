//! Real audio samples for tests, made with ffmpeg: a 1 s 440 Hz sine as MP3 (libmp3lame) and as
//! AAC in an .m4a container.
//!
//! The samples live in `<target>/tmp/xomcloud-media-v1/` (`CARGO_TARGET_TMPDIR`), made once and
//! shared by every test process and by every copy of this module (it is compiled both as
//! `support::media` and inside `stub.rs`): each file is written under a unique name and renamed
//! into place, so concurrent test binaries never see a partial file. The files are read-only;
//! copy them before changing anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const INSTALL_FFMPEG: &str = "apt-get install -y --no-install-recommends ffmpeg";

/// Bump when the recipe below changes, so stale samples are not reused.
const CACHE_NAME: &str = "xomcloud-media-v1";

/// The ffmpeg to use: `$FFMPEG_BIN`, else `ffmpeg` on PATH. Panics (with the install command)
/// when `ffmpeg -version` cannot run.
pub fn ffmpeg() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("FFMPEG_BIN")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("ffmpeg"), PathBuf::from);
        let status = Command::new(&bin)
            .arg("-version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => bin,
            other => panic!(
                "cannot run `{} -version` ({other:?}): ffmpeg is needed by these tests; install it \
                 with `sudo apt-get update && sudo {INSTALL_FFMPEG}` (or run scripts/setup.sh), \
                 or point FFMPEG_BIN at an ffmpeg binary",
                bin.display()
            ),
        }
    })
    .clone()
}

/// A real MP3 file (MPEG-1 Layer III, 128 kb/s, 1 s).
pub fn sample_mp3() -> &'static Path {
    static MP3: OnceLock<PathBuf> = OnceLock::new();
    MP3.get_or_init(|| {
        sample(
            "sample.mp3",
            &["-c:a", "libmp3lame", "-b:a", "128k"],
            is_mp3,
        )
    })
}

/// A real AAC-in-MP4 file with the .m4a extension (1 s).
pub fn sample_m4a() -> &'static Path {
    static M4A: OnceLock<PathBuf> = OnceLock::new();
    M4A.get_or_init(|| {
        sample(
            "sample.m4a",
            &["-c:a", "aac", "-b:a", "128k", "-f", "ipod"],
            is_m4a,
        )
    })
}

fn cache_dir() -> PathBuf {
    let root = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = root.join(CACHE_NAME);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn is_mp3(bytes: &[u8]) -> bool {
    bytes.starts_with(b"ID3") || (bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
}

fn is_m4a(bytes: &[u8]) -> bool {
    bytes.len() > 8 && &bytes[4..8] == b"ftyp"
}

fn looks_right(path: &Path, check: fn(&[u8]) -> bool) -> bool {
    fs::read(path).is_ok_and(|b| b.len() > 1000 && check(&b))
}

fn sample(name: &str, codec: &[&str], check: fn(&[u8]) -> bool) -> PathBuf {
    let dir = cache_dir();
    let path = dir.join(name);
    if looks_right(&path, check) {
        return path;
    }
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("bin");
    let partial = dir.join(format!(".{name}.{}.partial.{ext}", std::process::id()));
    let output = Command::new(ffmpeg())
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=1"])
        .args(["-ac", "2", "-ar", "44100"])
        .args(codec)
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start ffmpeg: {e}"));
    assert!(
        output.status.success() && looks_right(&partial, check),
        "ffmpeg could not make {name} ({}): {}\nthe Debian ffmpeg package has libmp3lame and aac; \
         install it with `sudo {INSTALL_FFMPEG}`",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut perms = fs::metadata(&partial)
        .expect("sample written")
        .permissions();
    perms.set_readonly(true);
    fs::set_permissions(&partial, perms).expect("make the sample read-only");
    fs::rename(&partial, &path)
        .unwrap_or_else(|e| panic!("cannot move the sample to {}: {e}", path.display()));
    path
}
