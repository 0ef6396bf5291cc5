//! `xomcloud download URL…`: the pipeline without a server — progress per track, a table of
//! what worked and why not, exit code 1 when any track failed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use xomcloud_common::config::{EnvSecrets, Secrets};
use xomcloud_common::presign::LinkSigner;
use xomcloud_common::storage::LocalStorage;
use xomcloud_common::ApiError;
use xomcloud_download_tracks::pipeline::{DownloadResult, TrackState};
use xomcloud_download_tracks::service::DownloadService;
use xomcloud_download_tracks::validate::{check_url, is_set_url, Track};

/// A track from a bare URL: `https://soundcloud.com/{artist}/{title}`.
fn track(i: usize, url: &str) -> Track {
    let segments: Vec<&str> = url
        .split('?')
        .next()
        .unwrap_or(url)
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(2)
        .collect();
    let words = |s: &str| s.replace(['-', '_'], " ");
    let (artist, title) = match segments.as_slice() {
        [artist, title, ..] => (words(artist), words(title)),
        [title] => (String::new(), words(title)),
        [] => (String::new(), format!("Track {}", i + 1)),
    };
    Track {
        id: (i + 1).to_string(),
        url: url.to_owned(),
        title,
        artist,
    }
}

pub async fn run(urls: &[String], output: &Path) -> Result<ExitCode, String> {
    let mut tracks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        check_url(url).map_err(|why| format!("{url}: {why}"))?;
        if is_set_url(url) {
            // As `POST /download`: sets are expanded by jobs (`xomcloud serve`'s page or /jobs).
            return Err(format!(
                "{url}: a SoundCloud set; download takes single tracks (sets: POST /jobs)"
            ));
        }
        tracks.push(track(i, url));
    }
    let settings = crate::cli::settings()?;
    let output = std::path::absolute(output).map_err(|e| e.to_string())?;
    let dir = output.parent().unwrap_or(Path::new("."));
    // The zip is written next to the output (same filesystem) and renamed into place.
    let staging = tempfile::Builder::new()
        .prefix(".xomcloud-")
        .tempdir_in(dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let storage = LocalStorage::new(staging.path(), "file://", LinkSigner::new(b"local"));
    let secrets = Secrets::new(&settings.ssm_prefix).source(EnvSecrets::from_env());
    let service = DownloadService::new(&settings, Arc::new(storage), secrets);

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let rows: Vec<ProgressBar> = tracks
        .iter()
        .map(|t| {
            let bar = bars.add(ProgressBar::new_spinner().with_style(style.clone()));
            bar.set_prefix(t.url.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    let progress_rows = rows.clone();
    let progress = Arc::new(move |i: usize, state: &TrackState| {
        let bar = &progress_rows[i];
        match state {
            TrackState::Queued => bar.set_message("queued"),
            TrackState::Downloading => bar.set_message("downloading…"),
            TrackState::Done => bar.finish_with_message("done"),
            TrackState::Failed(why) => bar.finish_with_message(format!("failed: {why}")),
        }
    });
    let result = service.download(&tracks, "local", progress).await;
    rows.iter().for_each(ProgressBar::finish);
    let _ = bars.clear();
    match result {
        Ok(result) => {
            let written = staging.path().join(&result.key);
            std::fs::rename(&written, &output)
                .map_err(|e| format!("cannot move the zip to {}: {e}", output.display()))?;
            print_table(&result);
            println!("wrote {}", output.display());
            Ok(if result.failed_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(ApiError::Download { message, details }) => {
            if let Some(serde_json::Value::Array(failed)) = details {
                for f in failed {
                    println!(
                        "FAILED  {}  {}",
                        f["title"].as_str().unwrap_or(""),
                        f["error"].as_str().unwrap_or("")
                    );
                }
            }
            Err(message)
        }
        Err(err) => Err(err.to_string()),
    }
}

fn print_table(result: &DownloadResult) {
    for t in &result.tracks_downloaded {
        println!("OK      {} - {}", t.artist, t.title);
    }
    for f in &result.failed {
        println!("FAILED  {} - {}  ({})", f.artist, f.title, f.error);
    }
    println!(
        "{} of {} tracks downloaded",
        result.successful, result.total
    );
}
