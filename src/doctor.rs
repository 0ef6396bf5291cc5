//! `xomcloud doctor`: is this machine ready? Finds scdl and ffmpeg, shows the configuration in
//! effect (secrets masked) and says how to install what is missing.

use std::path::Path;
use std::process::ExitCode;

use xomcloud_common::config::{ConfigError, EnvSecrets, Secret, Secrets};
use xomcloud_common::logging::mask;

async fn version(program: &Path, flag: &str) -> Option<String> {
    let out = tokio::process::Command::new(program)
        .arg(flag)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or("").trim().to_owned())
}

pub async fn run() -> Result<ExitCode, String> {
    let s = crate::cli::settings()?;
    let mut ok = true;
    match version(&s.scdl_bin, "--version").await {
        Some(v) => println!("ok       scdl {v} ({})", s.scdl_bin.display()),
        None => {
            ok = false;
            println!("MISSING  scdl ({} does not run)", s.scdl_bin.display());
            println!("         install: scripts/setup.sh   (or: python3 -m venv .venv && .venv/bin/pip install scdl==3.0.9)");
            println!("         then:    export SCDL_BIN=$PWD/.venv/bin/scdl");
        }
    }
    // A job's links are resolved by the yt-dlp that scdl brings (`YT_DLP_BIN`).
    let yt_dlp = s.yt_dlp_bin();
    match version(&yt_dlp, "--version").await {
        Some(v) => println!("ok       yt-dlp {v} ({})", yt_dlp.display()),
        None => {
            ok = false;
            println!("MISSING  yt-dlp ({} does not run)", yt_dlp.display());
            println!("         it comes with scdl (scripts/setup.sh); or set YT_DLP_BIN");
        }
    }
    match version(&s.ffmpeg_bin, "-version").await {
        Some(v) => println!("ok       {v}"),
        None => {
            ok = false;
            println!("MISSING  ffmpeg ({} does not run)", s.ffmpeg_bin.display());
            println!("         install: sudo apt-get install -y --no-install-recommends ffmpeg");
        }
    }
    let secret = |name: &str| match std::env::var(name) {
        Ok(v) if !v.is_empty() => mask(&v),
        _ => "(not set)".to_owned(),
    };
    println!();
    println!(
        "storage                   {}",
        match &s.bucket {
            Some(b) => format!("s3://{b}"),
            None => format!("{} (local)", s.data_dir.display()),
        }
    );
    println!("API_SECRET_KEY            {}", secret("API_SECRET_KEY"));
    // Resolved as `serve`/`download` resolve it: only "not set" is a quiet fallback.
    let secrets = Secrets::new(&s.ssm_prefix).source(EnvSecrets::from_env());
    match secrets.get(Secret::SoundcloudClientId).await {
        Ok(id) => println!("SOUNDCLOUD_CLIENT_ID      {}", mask(&id)),
        Err(ConfigError::MissingSecret { .. }) => {
            println!("SOUNDCLOUD_CLIENT_ID      (not set; scdl generates one)")
        }
        Err(err) => {
            ok = false;
            println!("PROBLEM  SOUNDCLOUD_CLIENT_ID is configured but unusable: {err}");
            println!(
                "         scdl would fall back to generating its own; fix the value or unset it"
            );
        }
    }
    println!("MAX_TRACKS                {}", s.max_tracks);
    println!("DOWNLOAD_CONCURRENCY      {}", s.concurrency);
    println!("TRACK_TIMEOUT_SECONDS     {}", s.track_timeout.as_secs());
    println!("PRESIGNED_EXPIRY_SECONDS  {}", s.presigned_expiry.as_secs());
    println!(
        "CORS_ALLOW_ORIGIN         {}",
        xomcloud_common::response::Cors::new(s.cors_allow_origin.as_deref()).allow_origin()
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
