//! The contract between our scdl command line (`scdl_args`), the real scdl 3.0.9 and yt-dlp in
//! `.venv` (`scripts/setup.sh --test`), and the stub that stands in for scdl in the other tests
//! (`tests/stubs/scdl`). Nothing here reaches SoundCloud: the real tools only print their help,
//! reject a bad command line, or run Python that builds yt-dlp objects offline; every child
//! gets a cleared environment, a temporary HOME and proxies pointing at a closed port.

#[allow(dead_code)]
#[path = "support/stub.rs"]
mod stub;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use stub::media;
use stub::{stub_env, stub_scdl};
use xomcloud_download_tracks::resolve::yt_dlp_args;
use xomcloud_download_tracks::scdl::{classify, scdl_args, FetchError, YT_DLP_ARGS};

/// Longest any single child may run before the test kills it and fails.
const LIMIT: Duration = Duration::from_secs(120);

const CLIENT_ID: &str = "cid-5ecret-77";

// ---------------------------------------------------------------------------------- helpers

/// A test tool from `$XOMCLOUD_TOOLS_BIN`, else `<repo>/.venv/bin`; panics when missing.
fn tool(name: &str) -> PathBuf {
    let dir = match std::env::var_os("XOMCLOUD_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin"),
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "test tool {} is missing: run `scripts/setup.sh --test` (or set XOMCLOUD_TOOLS_BIN)",
        bin.display()
    );
    bin
}

/// A command with nothing inherited but PATH: a private HOME/XDG tree under `home`, no
/// credentials, and every proxy variable pointing at a closed local port, so a tool that tried
/// the network would fail at once instead of reaching SoundCloud.
fn isolated(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, "http://127.0.0.1:9");
    }
    cmd
}

/// The stub, isolated like [`isolated`], with the sample files it copies.
fn stub_cmd(home: &Path) -> Command {
    let mut cmd = isolated(&stub_scdl(), home);
    cmd.envs(stub_env());
    cmd
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains("ERROR:"))
            .collect()
    }
}

/// Sends SIGKILL to a whole process group (no libc in the dev-dependencies: bash's `kill`).
fn kill_group(pgid: u32) {
    let status = Command::new("bash")
        .args(["-c", "kill -KILL -- \"-$1\"", "kill", &pgid.to_string()])
        .stdin(Stdio::null())
        .status()
        .expect("run bash to kill a process group");
    assert!(status.success(), "kill -KILL -- -{pgid} failed");
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Runs to completion in its own process group; kills the group and panics after [`LIMIT`].
fn run(cmd: &mut Command) -> Ran {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let Some(status) = wait_until(&mut child, Instant::now() + LIMIT) else {
        kill_group(child.id());
        let _ = child.wait();
        panic!(
            "{cmd:?} ran longer than {LIMIT:?}: {}",
            err.join().unwrap_or_default()
        );
    };
    Ran {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_str().expect("UTF-8 argument").to_owned())
        .collect()
}

/// Options declared in a help text, with whether each takes a value: the leading `-`/`--`
/// tokens of every line (`-f, --format FORMAT`, `-h --help`, `--path [path]`), the token after
/// the last one telling whether a value follows.
/// The options the pinned `yt-dlp --help` declares (run with its own HOME).
fn yt_dlp_options() -> BTreeMap<String, bool> {
    let home = tempfile::tempdir().unwrap();
    let help = run(isolated(&tool("yt-dlp"), home.path()).arg("--help"));
    assert!(
        help.status.success(),
        "yt-dlp --help failed: {}",
        help.stderr
    );
    declared_options(&help.stdout)
}

fn declared_options(help: &str) -> BTreeMap<String, bool> {
    let mut options = BTreeMap::new();
    for line in help.lines() {
        let mut names = Vec::new();
        let mut takes_value = false;
        for token in line.split_whitespace() {
            if token.starts_with('-') && token.len() > 1 && !token.starts_with("---") {
                names.push(token.trim_end_matches(',').to_owned());
            } else {
                takes_value = !names.is_empty()
                    && (token.starts_with('[')
                        || token.starts_with('<')
                        || token
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || matches!(c, '_' | '-' | ':')));
                break;
            }
        }
        for name in names {
            options.entry(name).or_insert(takes_value);
        }
    }
    options
}

/// scdl's option list: the "Options:" section of its help (the usage lines above it mention
/// every option too, but only the section says what each one is).
fn scdl_help() -> String {
    let home = tempfile::tempdir().unwrap();
    let ran = run(isolated(&tool("scdl"), home.path()).arg("--help"));
    assert!(ran.status.success(), "scdl --help failed: {}", ran.stderr);
    assert!(
        ran.stdout.contains("Options:"),
        "unexpected scdl help:\n{}",
        ran.stdout
    );
    ran.stdout
}

fn python(script: &str, args: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let ran = run(isolated(&tool("python"), home.path())
        .arg("-c")
        .arg(script)
        .args(args));
    assert!(
        ran.status.success(),
        "python failed: {}\n{}",
        ran.status,
        ran.stderr
    );
    serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}):\n{}\n{}",
            ran.stdout, ran.stderr
        )
    })
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn yt_dlp_args_value(args: &[String]) -> &str {
    let values: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--yt-dlp-args="))
        .collect();
    assert_eq!(values.len(), 1, "exactly one --yt-dlp-args=… in {args:?}");
    values[0]
}

// ------------------------------------------------------------------------------------ tests

#[test]
fn every_flag_we_pass_is_in_real_scdl_help() {
    let help = scdl_help();
    let section = help
        .split_once("\nOptions:")
        .expect("an Options: section")
        .1;
    let options = declared_options(section);
    for name in [
        "-l",
        "--path",
        "--name-format",
        "--client-id",
        "--yt-dlp-args",
        "--hide-progress",
    ] {
        assert!(
            options.contains_key(name),
            "help parsing lost {name}: {options:?}"
        );
    }
    for client_id in [Some("id"), None] {
        let args = strings(&scdl_args(
            "https://soundcloud.com/a/b",
            Path::new("/tmp/x"),
            client_id,
        ));
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            assert!(
                arg.starts_with('-'),
                "stray positional argument {arg:?} in {args:?}"
            );
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, _)) if flag.starts_with("--") => (flag, true),
                _ => (arg.as_str(), false),
            };
            let takes_value = *options
                .get(flag)
                .unwrap_or_else(|| panic!("{flag} is not an option of scdl 3.0.9:\n{section}"));
            if takes_value && !inline {
                assert!(i + 1 < args.len(), "{flag} needs a value in {args:?}");
                i += 1;
            }
            assert!(
                takes_value || !inline,
                "{flag} takes no value but got one in {args:?}"
            );
            i += 1;
        }
    }
}

/// Runs yt-dlp's own format selector on SoundCloud-like formats, offline.
const FORMAT_SELECTION: &str = r#"
import json, sys
from yt_dlp import YoutubeDL

spec = sys.argv[1]

def fmt(format_id, ext, acodec, abr, protocol, **extra):
    return {"format_id": format_id, "url": "https://example.invalid/" + format_id, "ext": ext,
            "acodec": acodec, "vcodec": "none", "abr": abr, "protocol": protocol, **extra}

# The preview has the highest bitrate and comes last (the "best" place for an unsorted list).
preview = fmt("http_mp3_128_preview", "mp3", "mp3", 320, "http")
mp3 = fmt("hls_mp3_128", "mp3", "mp3", 128, "m3u8_native")
aac = fmt("hls_aac_160", "m4a", "mp4a.40.2", 160, "m3u8_native")
cases = {
    "all": [mp3, aac, preview],
    "no_mp3": [aac, preview],
    "preview_only": [preview],
    "aac_preview_only": [fmt("hls_aac_160_preview", "m4a", "mp4a.40.2", 160, "m3u8_native"), preview],
}
out = {}
with YoutubeDL({"quiet": True, "no_warnings": True}) as ydl:
    for label, s in (("ours", spec), ("plain_ba", "ba")):
        selector = ydl.build_format_selector(s)
        for name, formats in cases.items():
            # As the brief's ctx, as yt-dlp builds it for audio-only sites, and after sorting.
            for variant, incomplete in (("ctx", False), ("audio_only_ctx", True)):
                ctx = {"formats": [dict(f) for f in formats], "incomplete_formats": incomplete,
                       "has_merged_format": False}
                out[f"{label}/{name}/{variant}"] = [f["format_id"] for f in selector(ctx)]
            info = {"formats": [dict(f) for f in formats]}
            ydl.sort_formats(info)
            ctx = {"formats": info["formats"], "incomplete_formats": True, "has_merged_format": False}
            out[f"{label}/{name}/sorted"] = [f["format_id"] for f in selector(ctx)]
print(json.dumps(out))
"#;

/// A job's link resolution runs yt-dlp itself (`resolve.rs`): every option before `--` is one
/// the pinned yt-dlp declares, each value where one is due, and the URLs come after `--`.
#[test]
fn resolution_flags_are_real_yt_dlp_options() {
    let urls = vec![
        "https://soundcloud.com/a/sets/b".to_owned(),
        "https://soundcloud.com/a/c".to_owned(),
    ];
    let args = strings(&yt_dlp_args(&urls));
    let split = args
        .iter()
        .position(|a| a == "--")
        .expect("a -- before the URLs");
    assert_eq!(&args[split + 1..], urls.as_slice());
    let options = yt_dlp_options();
    assert!(
        options.contains_key("--flat-playlist"),
        "help parsing failed"
    );
    let mut i = 0;
    let mut seen = Vec::new();
    while i < split {
        let token = args[i].as_str();
        let takes_value = *options
            .get(token)
            .unwrap_or_else(|| panic!("{token} is not an option of yt-dlp (in .venv)"));
        seen.push(token);
        if takes_value {
            let value = args.get(i + 1).filter(|_| i + 1 < split);
            let value = value.unwrap_or_else(|| panic!("{token} needs a value"));
            assert!(!value.starts_with('-'), "{token} takes {value:?}");
            i += 1;
        }
        i += 1;
    }
    for needed in ["--dump-single-json", "--flat-playlist", "--ignore-config"] {
        assert!(seen.contains(&needed), "{needed} missing from {args:?}");
    }
    // The real yt-dlp takes the whole command line (here with no URL reachable: the proxies
    // point at a closed port, so it fails on the network, not on its options).
    let home = tempfile::tempdir().unwrap();
    let ran = run(isolated(&tool("yt-dlp"), home.path())
        .args(&args[..split])
        .args(["--", "https://soundcloud.com/a/c"]));
    assert!(
        !ran.stderr.contains("no such option") && !ran.stderr.contains("error: "),
        "yt-dlp refused our options: {}",
        ran.stderr
    );
}

#[test]
fn yt_dlp_args_are_real_yt_dlp_options() {
    let args = strings(&scdl_args(
        "https://soundcloud.com/a/b",
        Path::new("/tmp/x"),
        Some("id"),
    ));
    let value = yt_dlp_args_value(&args);
    assert_eq!(value, YT_DLP_ARGS);
    // scdl splits the string with shlex.split: without quotes or escapes that is a whitespace
    // split, so what we read here is what yt-dlp gets.
    assert!(
        !value.contains(['"', '\'', '\\']) && !value.contains(['\n', '\t']),
        "quotes or escapes in --yt-dlp-args: shlex would change it: {value}"
    );
    let tokens: Vec<&str> = value.split(' ').collect();
    assert!(
        tokens.iter().all(|t| !t.is_empty()),
        "double spaces in {value:?}"
    );

    let options = yt_dlp_options();
    assert!(
        options.contains_key("--format") && options.contains_key("-f"),
        "help parsing failed"
    );
    let mut spec = None;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        assert!(token.starts_with('-'), "stray value {token:?} in {value:?}");
        let takes_value = *options
            .get(token)
            .unwrap_or_else(|| panic!("{token} is not an option of yt-dlp (in .venv)"));
        if takes_value {
            let next = *tokens
                .get(i + 1)
                .unwrap_or_else(|| panic!("{token} needs a value"));
            if token == "-f" || token == "--format" {
                spec = Some(next);
            }
            i += 1;
        }
        i += 1;
    }
    let spec = spec.expect("a -f format spec in --yt-dlp-args");

    let picked = python(FORMAT_SELECTION, &[spec]);
    let get = |key: &str| -> Vec<String> {
        serde_json::from_value(picked[key].clone()).unwrap_or_else(|_| panic!("{key}: {picked}"))
    };
    for variant in ["ctx", "audio_only_ctx", "sorted"] {
        assert_eq!(
            get(&format!("ours/all/{variant}")),
            ["hls_mp3_128"],
            "{variant}"
        );
        assert_eq!(
            get(&format!("ours/no_mp3/{variant}")),
            ["hls_aac_160"],
            "{variant}"
        );
        assert!(
            get(&format!("ours/preview_only/{variant}")).is_empty(),
            "{variant}: {picked}"
        );
        assert!(
            get(&format!("ours/aac_preview_only/{variant}")).is_empty(),
            "{variant}: {picked}"
        );
    }
    // Control: scdl's own default ("ba") does take the preview, so the filter is what works.
    assert_eq!(get("plain_ba/all/ctx"), ["http_mp3_128_preview"]);
    assert_eq!(
        get("plain_ba/preview_only/sorted"),
        ["http_mp3_128_preview"]
    );
}

/// What scdl 3.0.9's `download_url` hands YoutubeDL for our command line: docopt, then
/// `_build_ytdl_params`, then the `--yt-dlp-args` overrides merged on top (as in scdl.py).
const SCDL_PARAMS: &str = r#"
import json, shlex, sys
from pathlib import Path
from docopt import docopt
import scdl.scdl as s
from scdl import utils

arguments = docopt(s.__doc__, argv=json.loads(sys.argv[1]))
arguments["--playlist-name-format"] = "%(playlist_index)s. %(uploader)s - %(title)s.%(ext)s"
arguments["--path"] = Path(arguments["--path"]).resolve()
python_args = {k.strip("-").replace("-", "_"): v for k, v in arguments.items()}
url = python_args.pop("l")
url, params, postprocessors = s._build_ytdl_params(url, python_args)
params["postprocessors"] = [pp for pp in params["postprocessors"]
                            if pp["key"] not in ("EmbedThumbnail", "FFmpegMetadata")]
overrides = utils.cli_to_api(shlex.split(python_args["yt_dlp_args"]))
merged = {**params, **overrides}
print(json.dumps({
    "url": url,
    "format": merged.get("format"),
    "ignoreerrors": merged.get("ignoreerrors"),
    "overrides": sorted(overrides),
    "noprogress": merged.get("noprogress"),
    "skip_unavailable_fragments": merged.get("skip_unavailable_fragments"),
    "outtmpl": postprocessors[0][0]._outtmpls[False],
    "postprocessors": [pp["key"] for pp in merged.get("postprocessors", [])],
}))
"#;

#[test]
fn scdl_hands_yt_dlp_our_format_and_keeps_ignoring_errors() {
    let args = strings(&scdl_args(
        "https://soundcloud.com/a/b",
        Path::new("/tmp/x"),
        Some("id"),
    ));
    let spec = YT_DLP_ARGS
        .split(' ')
        .skip_while(|t| *t != "-f")
        .nth(1)
        .expect("-f spec");
    let params = python(SCDL_PARAMS, &[&serde_json::to_string(&args).unwrap()]);
    assert_eq!(params["url"], "https://soundcloud.com/a/b");
    assert_eq!(params["format"], spec, "{params}");
    assert_eq!(params["outtmpl"], "/tmp/x/track.%(ext)s", "{params}");
    assert_eq!(params["noprogress"], true, "{params}");
    // yt-dlp would otherwise skip an HLS segment that keeps failing and finish with a gap.
    assert_eq!(params["skip_unavailable_fragments"], false, "{params}");
    // scdl runs yt-dlp with ignoreerrors="only_download": a failed track is an ERROR line and
    // exit status 0 (what the stub does). `--abort-on-error` inside --yt-dlp-args does not
    // change that: scdl keeps only the options that differ from its patched defaults, and
    // ignoreerrors=False is one of those defaults, so the override is dropped.
    assert_eq!(params["ignoreerrors"], "only_download", "{params}");
    assert!(
        !params["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "ignoreerrors"),
        "{params}"
    );
}

/// docopt-ng on scdl's usage text, for a list of command lines: `[0, ""]` when accepted (or
/// help/version), `[1, message]` when rejected.
const DOCOPT_TABLE: &str = r#"
import contextlib, io, json, sys
from docopt import docopt
import scdl.scdl as s

results = []
for argv in json.loads(sys.argv[1]):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            docopt(s.__doc__, argv=argv, version="3.0.9")
        results.append([0, ""])
    except SystemExit as e:
        results.append([0, ""] if e.code is None else [1, str(e.code)])
print(json.dumps(results))
"#;

#[test]
fn stub_accepts_what_real_scdl_accepts() {
    // Real scdl: docopt rejects the flag before any config or network access.
    let bad = ["--bogus-flag", "-l", "https://soundcloud.com/a/b"];
    let real_home = tempfile::tempdir().unwrap();
    let real = run(isolated(&tool("scdl"), real_home.path()).args(bad));
    assert!(
        !real.status.success(),
        "real scdl accepted {bad:?}: {}",
        real.stderr
    );
    assert!(
        real.stderr.contains("Usage:") && real.stderr.contains("--bogus-flag"),
        "{}",
        real.stderr
    );
    assert!(real.stdout.is_empty());
    assert!(
        files_under(real_home.path()).is_empty(),
        "real scdl wrote {:?}",
        files_under(real_home.path())
    );

    let stub_home = tempfile::tempdir().unwrap();
    let out = stub_home.path().join("out");
    let fake = run(stub_cmd(stub_home.path()).args(bad).arg("--path").arg(&out));
    assert_eq!(fake.status.code(), real.status.code(), "{}", fake.stderr);
    assert_eq!(
        fake.stderr, real.stderr,
        "the stub's usage message differs from scdl's"
    );
    assert!(
        files_under(stub_home.path()).is_empty(),
        "the stub wrote {:?}",
        files_under(stub_home.path())
    );

    // Help and version, byte for byte.
    for flag in ["--help", "--version"] {
        let real = run(isolated(&tool("scdl"), real_home.path()).arg(flag));
        let fake = run(stub_cmd(stub_home.path()).arg(flag));
        assert!(real.status.success() && fake.status.success(), "{flag}");
        assert_eq!(fake.stdout, real.stdout, "{flag}");
    }

    // The same verdict (and message) as scdl's docopt on a table of command lines; `{url}` is
    // a URL the stub answers with nothing at all.
    let table: &[&[&str]] = &[
        &["-l", "{url}"],
        &["-l", "{url}", "--path=/x"],
        &["-l{url}"],
        &["-l={url}"],
        &["-l", "{url}", "--bogus"],
        &["-l", "{url}", "--bogus=it's"],
        &["-l", "{url}", "--pa", "/x"],
        &["-l", "{url}", "--hide"],
        &["-l", "{url}", "-x"],
        &["-l", "{url}", "-a", "-t"],
        &["-t", "-a", "-l", "{url}"],
        &["-l", "{url}", "-at"],
        &["-l", "{url}", "--debug", "--error"],
        &["-l", "{url}", "-c", "--force-metadata"],
        &["-l", "{url}", "--path", "/x", "--path", "/y"],
        &["-l", "{url}", "-l", "{url}"],
        &["--path", "/x"],
        &[],
        &["-l"],
        &["-l", "--"],
        &["-l", "{url}", "--client-id"],
        &["-l", "{url}", "--hide-progress=1"],
        &["-l", "{url}", "extra"],
        &["-l", "{url}", "--", "x"],
        &["me", "-l", "{url}"],
        &["-s", "q", "-l", "{url}"],
        &["-l", "{url}", "--yt-dlp-args", "-f ba"],
        &["-l", "{url}", "-o3", "--no-playlist", "--opus", "--flac"],
        &["--bogus", "-h"],
        &["-l", "{url}", "--version"],
    ];
    let url = "https://soundcloud.com/someone/empty-1";
    let table: Vec<Vec<String>> = table
        .iter()
        .map(|argv| argv.iter().map(|a| a.replace("{url}", url)).collect())
        .collect();
    let verdicts = python(DOCOPT_TABLE, &[&serde_json::to_string(&table).unwrap()]);
    for (argv, verdict) in table.iter().zip(verdicts.as_array().unwrap()) {
        let home = tempfile::tempdir().unwrap();
        let fake = run(stub_cmd(home.path()).current_dir(home.path()).args(argv));
        let accepted = fake.status.success()
            || (fake.status.code() == Some(2)
                && fake.stderr.contains("only -l <url> is supported"));
        let expected_ok = verdict[0] == 0;
        assert_eq!(
            accepted, expected_ok,
            "{argv:?}: docopt says {verdict}, the stub {}: {}",
            fake.status, fake.stderr
        );
        if !expected_ok {
            assert_eq!(
                fake.stderr.trim_end(),
                verdict[1].as_str().unwrap().trim_end(),
                "{argv:?}"
            );
        }
    }

    // Our real command line: track.mp3 in --path, scdl.cfg under XDG_CONFIG_HOME only.
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let xdg = t.path().join("xdg-config");
    let out = t.path().join("out");
    let log = t.path().join("calls.jsonl");
    let real_cfg = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/scdl/scdl.cfg"));
    let before = real_cfg
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok());
    let args = scdl_args(
        "https://soundcloud.com/someone/ok-track",
        &out,
        Some(CLIENT_ID),
    );
    let ran = run(stub_cmd(&home)
        .env("XDG_CONFIG_HOME", &xdg)
        .env("SCDL_STUB_LOG", &log)
        .env("AWS_SECRET_ACCESS_KEY", "leaked")
        .args(&args));
    assert!(ran.status.success(), "{}", ran.stderr);
    assert!(ran.error_lines().is_empty(), "{}", ran.stderr);
    assert!(
        ran.stdout.is_empty(),
        "scdl writes nothing on stdout: {}",
        ran.stdout
    );
    assert_eq!(files_under(&out), [out.join("track.mp3")]);
    assert_eq!(
        std::fs::read(out.join("track.mp3")).unwrap(),
        std::fs::read(media::sample_mp3()).unwrap()
    );
    let cfg =
        std::fs::read_to_string(xdg.join("scdl/scdl.cfg")).expect("scdl.cfg under XDG_CONFIG_HOME");
    assert!(
        cfg.starts_with("[scdl]\n") && cfg.contains("\nname_format = "),
        "{cfg}"
    );
    assert!(
        !home.join(".config").exists(),
        "HOME/.config used although XDG_CONFIG_HOME is set"
    );
    let after = real_cfg
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok());
    assert_eq!(before, after, "the real HOME's scdl.cfg was touched");
    let yt_dlp_cache = home.join(".cache/yt-dlp/soundcloud/client_id.json");
    assert!(std::fs::read_to_string(&yt_dlp_cache)
        .unwrap()
        .contains(CLIENT_ID));

    // One log line: the argv as given, the environment it ran with, no credential variables.
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["argv"],
        serde_json::to_value(strings(&args)).unwrap()
    );
    assert_eq!(lines[0]["HOME"], home.to_str().unwrap());
    assert_eq!(lines[0]["XDG_CONFIG_HOME"], xdg.to_str().unwrap());
    assert_eq!(
        lines[0]["secret_env"],
        serde_json::json!(["AWS_SECRET_ACCESS_KEY"])
    );
    assert_eq!(
        lines[0]["pid"], lines[0]["pgid"],
        "run() starts it as a group leader"
    );

    // m4a-: the AAC sample as track.m4a; a name format without .%(ext)s gets one, v2 fields work.
    let out = t.path().join("m4a");
    let ran = run(stub_cmd(&home).args(scdl_args(
        "https://soundcloud.com/someone/m4a-x",
        &out,
        None,
    )));
    assert!(ran.status.success(), "{}", ran.stderr);
    assert_eq!(
        std::fs::read(out.join("track.m4a")).unwrap(),
        std::fs::read(media::sample_m4a()).unwrap()
    );
    let out = t.path().join("names");
    for format in ["{title}", "%(uploader)s - %(title)s.%(ext)s"] {
        let ran = run(stub_cmd(&home)
            .args([
                "-l",
                "https://soundcloud.com/someone/ok-named",
                "--name-format",
                format,
                "--path",
            ])
            .arg(&out));
        assert!(ran.status.success(), "{}", ran.stderr);
    }
    assert_eq!(
        files_under(&out),
        [out.join("ok-named.mp3"), out.join("someone - ok-named.mp3")]
    );
}

#[test]
fn stub_failure_shapes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let shapes = [
        ("notfound-a", "HTTP Error 404", FetchError::NotFound),
        ("geo-a", "geo restriction", FetchError::GeoBlocked),
        ("ratelimit-a", "HTTP Error 429", FetchError::RateLimited),
        (
            "preview-a",
            "Requested format is not available",
            FetchError::PreviewOnly,
        ),
        (
            "leak-a",
            &format!("?client_id={CLIENT_ID}&"),
            FetchError::Failed(String::new()),
        ),
    ];
    for (segment, needle, kind) in shapes {
        let out = t.path().join(segment);
        let url = format!("https://soundcloud.com/someone/{segment}");
        let ran = run(stub_cmd(&home).args(scdl_args(&url, &out, Some(CLIENT_ID))));
        assert_eq!(ran.status.code(), Some(0), "{segment}: {}", ran.stderr);
        let errors = ran.error_lines();
        assert_eq!(errors.len(), 1, "{segment}: {}", ran.stderr);
        assert!(
            errors[0].starts_with("ERROR: ") && errors[0].contains(needle),
            "{segment}: {}",
            errors[0]
        );
        assert!(
            files_under(&out).is_empty(),
            "{segment} wrote {:?}",
            files_under(&out)
        );
        // The runner's reading of the line.
        match (classify(errors[0], Some(CLIENT_ID)), kind) {
            (FetchError::Failed(reason), FetchError::Failed(_)) => {
                assert!(
                    !reason.contains(CLIENT_ID) && reason.contains("client_id=***"),
                    "{reason}"
                );
            }
            (got, want) => assert_eq!(got, want, "{segment}: {}", errors[0]),
        }
    }

    // crash-: a traceback, exit 1, no ERROR line, no file.
    let out = t.path().join("crash");
    let ran = run(stub_cmd(&home).args(scdl_args(
        "https://soundcloud.com/someone/crash-a",
        &out,
        None,
    )));
    assert_eq!(ran.status.code(), Some(1));
    assert!(
        ran.stderr.contains("Traceback (most recent call last):"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.lines().last(), Some("KeyError: 'x'"));
    assert!(ran.error_lines().is_empty() && files_under(&out).is_empty());

    // broken-: a segment that keeps failing. With our flags, two ERROR lines (the first is the
    // one classified) and only yt-dlp's .part/.ytdl files; without them, a file with a gap.
    let out = t.path().join("broken");
    let url = "https://soundcloud.com/someone/broken-a";
    let ran = run(stub_cmd(&home).args(scdl_args(url, &out, Some(CLIENT_ID))));
    assert_eq!(ran.status.code(), Some(0), "{}", ran.stderr);
    let errors = ran.error_lines();
    assert_eq!(
        errors,
        [
            "ERROR: [download] Got error: HTTP Error 404: Not Found. Giving up after 10 retries",
            "ERROR: fragment 2 not found, unable to continue"
        ],
        "{}",
        ran.stderr
    );
    assert_eq!(classify(errors[0], None), FetchError::StreamFailed);
    let mut left: Vec<String> = files_under(&out)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["track.mp3.part", "track.mp3.ytdl"]);
    let out = t.path().join("broken-default");
    let ran = run(stub_cmd(&home).args([
        "-l",
        url,
        "--path",
        out.to_str().unwrap(),
        "--name-format",
        "track",
    ]));
    assert!(ran.error_lines().is_empty(), "{}", ran.stderr);
    assert!(ran.stderr.contains("Skipping fragment 2"), "{}", ran.stderr);
    assert_eq!(files_under(&out), [out.join("track.mp3")]);

    // empty-: success, silence about errors, and nothing on disk.
    let out = t.path().join("empty");
    let ran = run(stub_cmd(&home).args(scdl_args(
        "https://soundcloud.com/someone/empty-a",
        &out,
        None,
    )));
    assert!(
        ran.status.success() && ran.error_lines().is_empty(),
        "{}",
        ran.stderr
    );
    assert!(files_under(&out).is_empty());

    // bench-: the delay, then SCDL_STUB_SIZE random bytes as track.mp3.
    let out = t.path().join("bench");
    let started = Instant::now();
    let ran = run(stub_cmd(&home)
        .env("SCDL_STUB_DELAY", "0.3")
        .env("SCDL_STUB_SIZE", "12345")
        .args(scdl_args(
            "https://soundcloud.com/someone/bench-a",
            &out,
            None,
        )));
    assert!(ran.status.success(), "{}", ran.stderr);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        std::fs::metadata(out.join("track.mp3")).unwrap().len(),
        12345
    );

    // hang-: still running after 1 s; killing its process group kills its child too.
    let pids = t.path().join("pids");
    let out = t.path().join("hang");
    let started = Instant::now();
    let mut child = stub_cmd(&home)
        .env("SCDL_STUB_PIDS", &pids)
        .args(scdl_args(
            "https://soundcloud.com/someone/hang-a",
            &out,
            None,
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let background: i32 = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(30) {
            kill_group(child.id());
            panic!("the hang stub did not record its child's PID");
        }
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    assert!(
        child.try_wait().unwrap().is_none(),
        "hang- exited on its own"
    );
    assert!(alive(background), "the background child is not running");
    kill_group(child.id());
    let status = wait_until(&mut child, Instant::now() + Duration::from_secs(10)).expect("killed");
    assert_eq!(status.signal(), Some(9), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(background) {
        assert!(
            Instant::now() < deadline,
            "process {background} survived the group kill"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Running (a zombie, killed but not yet reaped by whoever inherited it, counts as dead).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

#[test]
fn declared_options_reads_both_help_styles() {
    let yt = "  -f, --format FORMAT   Video format code\n  --abort-on-error   Abort\n";
    let sc = "    -l [url]     URL\n    -h --help    Show\n    --hide-progress   Hide\n";
    let yt = declared_options(yt);
    let sc = declared_options(sc);
    assert_eq!(yt.get("-f"), Some(&true));
    assert_eq!(yt.get("--format"), Some(&true));
    assert_eq!(yt.get("--abort-on-error"), Some(&false));
    assert_eq!(sc.get("-l"), Some(&true));
    assert_eq!(sc.get("--help"), Some(&false));
    assert_eq!(sc.get("--hide-progress"), Some(&false));
    let set: BTreeSet<&String> = sc.keys().collect();
    assert_eq!(set.len(), 4);
}
