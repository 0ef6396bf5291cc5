//! Command-line arguments, and the small commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xomcloud_common::config::{ConfigError, Secret, Settings, DEFAULT_SSM_PREFIX};

#[derive(Parser)]
#[command(
    name = "xomcloud",
    version,
    about = "SoundCloud tracks → one zip, locally or as the production API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the production API (POST /download) on this machine
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: String,
    },
    /// Download tracks straight into a zip (no server, no token)
    Download {
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
        #[arg(short, long, default_value = "tracks.zip")]
        output: PathBuf,
    },
    /// Mint an HS256 token with the configured API_SECRET_KEY
    Token {
        #[arg(long)]
        sub: String,
        /// Lifetime: 3600, 90s, 30m, 1h or 7d
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
    /// Check scdl, ffmpeg and the configuration
    Doctor,
}

pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 3600, 90s, 30m, 1h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} is not a positive duration")),
        Some(secs) => Ok(secs),
    }
}

pub fn settings() -> Result<Settings, String> {
    let mut settings = Settings::from_env().map_err(|e| e.to_string())?;
    // After `scripts/setup.sh`, scdl lives in the project venv: use it unless told otherwise.
    let venv_scdl = Path::new(".venv/bin/scdl");
    if std::env::var_os("SCDL_BIN").is_none() && venv_scdl.exists() {
        settings.scdl_bin = venv_scdl.canonicalize().unwrap_or(venv_scdl.into());
    }
    Ok(settings)
}

pub fn api_secret() -> Result<String, String> {
    match std::env::var("API_SECRET_KEY") {
        Ok(s) if !s.trim().is_empty() => Ok(s),
        _ => {
            // The parameter the deployment reads, under its SSM_PREFIX (as Settings reads it).
            let prefix = std::env::var("SSM_PREFIX")
                .ok()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_SSM_PREFIX.into());
            Err(missing_api_secret(&prefix))
        }
    }
}

fn missing_api_secret(prefix: &str) -> String {
    let parameter = Secret::ApiSecretKey.parameter(prefix);
    let missing = ConfigError::MissingSecret {
        secret: "API_SECRET_KEY",
        parameter: parameter.clone(),
    };
    format!(
        "{missing} (for the deployed API: export API_SECRET_KEY=\"$(aws ssm get-parameter --name {parameter} --with-decryption --query Parameter.Value --output text)\")"
    )
}

pub fn token(sub: &str, ttl: u64) -> Result<ExitCode, String> {
    let secret = api_secret()?;
    let token =
        xomcloud_authorizer::jwt::mint(sub, secret.as_bytes(), ttl).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{missing_api_secret, parse_ttl};

    #[test]
    fn the_missing_secret_message_names_the_configured_prefix() {
        let message = missing_api_secret("/staging/xc");
        assert!(
            message.contains("SSM parameter /staging/xc/api/API_SECRET_KEY"),
            "{message}"
        );
        assert!(
            message.contains("--name /staging/xc/api/API_SECRET_KEY "),
            "{message}"
        );
        assert!(!message.contains("/xomcloud"), "{message}");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
