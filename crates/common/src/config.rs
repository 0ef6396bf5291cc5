//! Configuration, read once at start-up: typed settings from the environment, and secrets
//! resolved env first, then SSM (cached with a TTL so rotated secrets are picked up).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{secret} is not configured: set the environment variable {secret} or the SSM parameter {parameter}")]
    MissingSecret {
        secret: &'static str,
        parameter: String,
    },
    #[error("{name} is empty")]
    Empty { name: String },
    #[error("could not read SSM parameter {parameter}: {message}")]
    Ssm { parameter: String, message: String },
    #[error("{name}={value:?} is invalid: {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// The secrets the backend uses, each with its env var and SSM parameter (under the prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Secret {
    ApiSecretKey,
    SoundcloudClientId,
    SoundcloudClientSecret,
}

impl Secret {
    pub fn env_name(self) -> &'static str {
        match self {
            Self::ApiSecretKey => "API_SECRET_KEY",
            Self::SoundcloudClientId => "SOUNDCLOUD_CLIENT_ID",
            Self::SoundcloudClientSecret => "SOUNDCLOUD_CLIENT_SECRET",
        }
    }

    pub fn parameter(self, prefix: &str) -> String {
        let suffix = match self {
            Self::ApiSecretKey => "/api/API_SECRET_KEY",
            Self::SoundcloudClientId => "/soundcloud/CLIENT_ID",
            Self::SoundcloudClientSecret => "/soundcloud/CLIENT_SECRET",
        };
        format!("{}{suffix}", prefix.trim_end_matches('/'))
    }
}

/// Where secrets come from. `Ok(None)`: this source does not have it (the next one is asked).
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn lookup(&self, secret: Secret) -> Result<Option<String>, ConfigError>;
}

/// Secrets from the process environment, snapshotted once.
#[derive(Clone, Default)]
pub struct EnvSecrets(HashMap<Secret, String>);

impl EnvSecrets {
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let all = [
            Secret::ApiSecretKey,
            Secret::SoundcloudClientId,
            Secret::SoundcloudClientSecret,
        ];
        Self(
            all.into_iter()
                .filter_map(|s| var(s.env_name()).map(|v| (s, v)))
                .collect(),
        )
    }

    pub fn with(mut self, secret: Secret, value: impl Into<String>) -> Self {
        self.0.insert(secret, value.into());
        self
    }
}

#[async_trait]
impl SecretSource for EnvSecrets {
    async fn lookup(&self, secret: Secret) -> Result<Option<String>, ConfigError> {
        Ok(self.0.get(&secret).cloned())
    }
}

pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub const SSM_CACHE_TTL: Duration = Duration::from_secs(300);

/// SSM Parameter Store (GetParameter WithDecryption) with a per-name TTL cache shared across
/// warm invocations.
pub struct SsmSecrets {
    client: aws_sdk_ssm::Client,
    prefix: String,
    ttl: Duration,
    clock: Clock,
    /// `None` remembers "no such parameter" for the TTL too, so a missing optional secret costs
    /// one call per TTL, not one per request.
    cache: Mutex<HashMap<Secret, (Instant, Option<String>)>>,
}

impl SsmSecrets {
    pub fn new(client: aws_sdk_ssm::Client, prefix: impl Into<String>) -> Self {
        Self::with_clock(client, prefix, SSM_CACHE_TTL, Arc::new(Instant::now))
    }

    pub fn with_clock(
        client: aws_sdk_ssm::Client,
        prefix: impl Into<String>,
        ttl: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            ttl,
            clock,
            cache: Mutex::default(),
        }
    }

    fn cached(&self, secret: Secret) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (fetched, value) = cache.get(&secret)?;
        ((self.clock)().saturating_duration_since(*fetched) < self.ttl).then(|| value.clone())
    }
}

#[async_trait]
impl SecretSource for SsmSecrets {
    async fn lookup(&self, secret: Secret) -> Result<Option<String>, ConfigError> {
        if let Some(value) = self.cached(secret) {
            return Ok(value);
        }
        let parameter = secret.parameter(&self.prefix);
        let result = self
            .client
            .get_parameter()
            .name(&parameter)
            .with_decryption(true)
            .send()
            .await;
        let value = match result {
            Ok(out) => out.parameter.and_then(|p| p.value),
            Err(err) => {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found())
                {
                    None
                } else {
                    let message = aws_sdk_ssm::error::DisplayErrorContext(&err).to_string();
                    return Err(ConfigError::Ssm { parameter, message });
                }
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(secret, ((self.clock)(), value.clone()));
        Ok(value)
    }
}

/// The resolution order: each source in turn (env, then SSM); a missing or empty value is an
/// error naming where it was looked for, never carrying a value.
#[derive(Clone)]
pub struct Secrets {
    sources: Vec<Arc<dyn SecretSource>>,
    prefix: String,
}

impl Secrets {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            sources: Vec::new(),
            prefix: prefix.into(),
        }
    }

    pub fn source(mut self, source: impl SecretSource + 'static) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    pub async fn get(&self, secret: Secret) -> Result<String, ConfigError> {
        for source in &self.sources {
            if let Some(value) = source.lookup(secret).await? {
                if value.trim().is_empty() {
                    return Err(ConfigError::Empty {
                        name: secret.env_name().into(),
                    });
                }
                return Ok(value);
            }
        }
        Err(ConfigError::MissingSecret {
            secret: secret.env_name(),
            parameter: secret.parameter(&self.prefix),
        })
    }
}

/// Every setting, with its default; read once from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cors_allow_origin: Option<String>,
    pub ssm_prefix: String,
    /// `S3_DOWNLOAD_BUCKET_NAME`; `None` when unset (the Lambda then uses the default bucket,
    /// the local CLI stores on disk).
    pub bucket: Option<String>,
    pub presigned_expiry: Duration,
    pub max_tracks: usize,
    pub concurrency: usize,
    pub track_timeout: Duration,
    pub scdl_bin: PathBuf,
    /// `YT_DLP_BIN`; unset: the `yt-dlp` next to `scdl_bin` (see [`Settings::yt_dlp_bin`]).
    pub yt_dlp_bin: Option<PathBuf>,
    /// `SOUNDCLOUD_SHORT_LINK_BASE`: where `on.soundcloud.com` links are asked where they lead
    /// instead of that host (tests point it at a fake); unset: `https://on.soundcloud.com`.
    pub short_link_base: Option<String>,
    pub ffmpeg_bin: PathBuf,
    pub jwt_leeway_seconds: u64,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// `JWT_REQUIRE_EXP`: tokens must carry `exp` (off: the real front end's static token has none).
    pub jwt_require_exp: bool,
    pub data_dir: PathBuf,
    /// `JOBS_TABLE` / `JOBS_QUEUE_URL`: DynamoDB table and SQS queue of download jobs (AWS);
    /// without both, the Lambda answers `/jobs` with 404 and `/download` works as before.
    pub jobs_table: Option<String>,
    pub jobs_queue_url: Option<String>,
    /// `JOBS_DLQ_ARN`: records from this queue mark their job failed instead of running it.
    pub jobs_dlq_arn: Option<String>,
    pub max_job_tracks: usize,
    /// How long job records live (`JOB_TTL_HOURS`, at most the zips' one-day lifecycle).
    pub job_ttl: Duration,
    /// `TRACK_QUEUE_URL`: the SQS queue of the jobs' track steps (AWS; else they share
    /// `JOBS_QUEUE_URL`). Its event source mapping's maximum concurrency bounds the fetches.
    pub track_queue_url: Option<String>,
    /// The pause before a track that failed for a passing reason is tried once more.
    pub track_retry_pause: Duration,
    /// How long a fetched track stays in the shared track cache (`TRACK_CACHE_DAYS`): the
    /// bucket's lifecycle rule in AWS, `serve`'s hourly sweep locally.
    pub track_cache: Duration,
    /// A custom S3 endpoint (MinIO, s3s, LocalStack) is addressed path-style.
    pub s3_endpoint: Option<String>,
    /// `SOUNDCLOUD_TOKEN_URL`: where the auth-token proxy forwards the OAuth exchange.
    pub soundcloud_token_url: String,
    /// `SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS`: the whole upstream exchange, connect to last byte.
    pub soundcloud_token_timeout: Duration,
    /// `RATE_LIMIT_PER_MINUTE`: downloads and jobs a caller (principal + client address) may
    /// create per minute, on average; 0 turns per-caller rate limits off.
    pub rate_limit_per_minute: u32,
    /// `RATE_LIMIT_BURST`: how many of them at once.
    pub rate_limit_burst: u32,
    /// `MAX_ACTIVE_JOBS_PER_CALLER`: queued or running jobs a caller may have; 0: no limit.
    pub max_active_jobs_per_caller: u32,
}

pub const DEFAULT_BUCKET: &str = "xomcloud-downloads";
pub const DEFAULT_SSM_PREFIX: &str = "/xomcloud";
pub const DEFAULT_SOUNDCLOUD_TOKEN_URL: &str = "https://secure.soundcloud.com/oauth/token";

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match text(name) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(ConfigError::Invalid {
                        name,
                        value: v,
                        expected: if min > 0 {
                            "a positive whole number"
                        } else {
                            "a whole number"
                        },
                    }),
                },
            }
        };
        let small = |name: &'static str, n: u64| -> Result<u32, ConfigError> {
            u32::try_from(n).map_err(|_| ConfigError::Invalid {
                name,
                value: n.to_string(),
                expected: "a whole number below 4294967296",
            })
        };
        let flag = |name: &'static str, default: bool| -> Result<bool, ConfigError> {
            match text(name).map(|v| v.to_ascii_lowercase()).as_deref() {
                None => Ok(default),
                Some("true" | "1" | "yes") => Ok(true),
                Some("false" | "0" | "no") => Ok(false),
                Some(v) => Err(ConfigError::Invalid {
                    name,
                    value: v.to_owned(),
                    expected: "true or false",
                }),
            }
        };
        Ok(Self {
            cors_allow_origin: text("CORS_ALLOW_ORIGIN"),
            ssm_prefix: text("SSM_PREFIX").unwrap_or_else(|| DEFAULT_SSM_PREFIX.into()),
            bucket: text("S3_DOWNLOAD_BUCKET_NAME"),
            presigned_expiry: Duration::from_secs(number("PRESIGNED_EXPIRY_SECONDS", 3600, 1)?),
            max_tracks: number("MAX_TRACKS", 5, 1)? as usize,
            concurrency: number("DOWNLOAD_CONCURRENCY", 4, 1)? as usize,
            track_timeout: Duration::from_secs(number("TRACK_TIMEOUT_SECONDS", 120, 1)?),
            scdl_bin: text("SCDL_BIN").unwrap_or_else(|| "scdl".into()).into(),
            yt_dlp_bin: text("YT_DLP_BIN").map(PathBuf::from),
            short_link_base: text("SOUNDCLOUD_SHORT_LINK_BASE"),
            ffmpeg_bin: text("FFMPEG_BIN").unwrap_or_else(|| "ffmpeg".into()).into(),
            jwt_leeway_seconds: number("JWT_LEEWAY_SECONDS", 0, 0)?,
            jwt_issuer: text("JWT_ISSUER"),
            jwt_audience: text("JWT_AUDIENCE"),
            jwt_require_exp: flag("JWT_REQUIRE_EXP", false)?,
            jobs_table: text("JOBS_TABLE"),
            jobs_queue_url: text("JOBS_QUEUE_URL"),
            jobs_dlq_arn: text("JOBS_DLQ_ARN"),
            max_job_tracks: number("MAX_JOB_TRACKS", 200, 1)? as usize,
            job_ttl: match number("JOB_TTL_HOURS", 24, 1)? {
                hours @ 1..=24 => Duration::from_secs(hours * 3600),
                hours => {
                    return Err(ConfigError::Invalid {
                        name: "JOB_TTL_HOURS",
                        value: hours.to_string(),
                        expected: "1 to 24 (job records must not outlive their zips)",
                    })
                }
            },
            track_queue_url: text("TRACK_QUEUE_URL"),
            track_retry_pause: Duration::from_secs(number("TRACK_RETRY_PAUSE_SECONDS", 5, 0)?),
            track_cache: Duration::from_secs(
                number("TRACK_CACHE_DAYS", 7, 1)?.saturating_mul(86_400),
            ),
            data_dir: text("XOMCLOUD_DATA_DIR")
                .unwrap_or_else(|| "data".into())
                .into(),
            s3_endpoint: text("AWS_ENDPOINT_URL_S3").or_else(|| text("AWS_ENDPOINT_URL")),
            soundcloud_token_url: text("SOUNDCLOUD_TOKEN_URL")
                .unwrap_or_else(|| DEFAULT_SOUNDCLOUD_TOKEN_URL.into()),
            soundcloud_token_timeout: Duration::from_secs(number(
                "SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS",
                10,
                1,
            )?),
            rate_limit_per_minute: small(
                "RATE_LIMIT_PER_MINUTE",
                number("RATE_LIMIT_PER_MINUTE", 10, 0)?,
            )?,
            rate_limit_burst: small("RATE_LIMIT_BURST", number("RATE_LIMIT_BURST", 5, 1)?)?,
            max_active_jobs_per_caller: small(
                "MAX_ACTIVE_JOBS_PER_CALLER",
                number("MAX_ACTIVE_JOBS_PER_CALLER", 3, 0)?,
            )?,
        })
    }

    pub fn bucket_or_default(&self) -> &str {
        self.bucket.as_deref().unwrap_or(DEFAULT_BUCKET)
    }

    /// `YT_DLP_BIN`, else the `yt-dlp` that scdl's installation brings, in `scdl_bin`'s
    /// directory, else `yt-dlp` on the PATH (a bare `scdl_bin` is looked up there too).
    pub fn yt_dlp_bin(&self) -> PathBuf {
        if let Some(bin) = &self.yt_dlp_bin {
            return bin.clone();
        }
        match self.scdl_bin.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("yt-dlp"),
            _ => PathBuf::from("yt-dlp"),
        }
    }
}

/// The AWS SDK configuration from the environment (region, credentials, `AWS_ENDPOINT_URL_*`).
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Env first, then SSM: what the Lambda functions use.
pub fn env_then_ssm(sdk: &aws_config::SdkConfig, prefix: &str) -> Secrets {
    Secrets::new(prefix)
        .source(EnvSecrets::from_env())
        .source(SsmSecrets::new(aws_sdk_ssm::Client::new(sdk), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.bucket_or_default(), "xomcloud-downloads");
        assert_eq!(s.presigned_expiry, Duration::from_secs(3600));
        assert_eq!((s.max_tracks, s.concurrency), (5, 4));
        assert_eq!(s.track_timeout, Duration::from_secs(120));
        assert_eq!(s.scdl_bin, PathBuf::from("scdl"));
        assert_eq!(s.yt_dlp_bin(), PathBuf::from("yt-dlp"));
        assert_eq!(s.ssm_prefix, "/xomcloud");
        assert_eq!(s.jwt_leeway_seconds, 0);
        assert_eq!(
            s.soundcloud_token_url,
            "https://secure.soundcloud.com/oauth/token"
        );
        assert_eq!(s.soundcloud_token_timeout, Duration::from_secs(10));
        assert!(!s.jwt_require_exp);
        assert_eq!(s.max_job_tracks, 200);
        assert!(s.track_queue_url.is_none());
        assert_eq!(s.job_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.track_cache, Duration::from_secs(7 * 86_400));
        assert!(s.jobs_table.is_none() && s.jobs_queue_url.is_none());
        assert_eq!(
            (
                s.rate_limit_per_minute,
                s.rate_limit_burst,
                s.max_active_jobs_per_caller
            ),
            (10, 5, 3)
        );
        let off = Settings::from_vars(vars(&[
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("MAX_ACTIVE_JOBS_PER_CALLER", "0"),
        ]))
        .unwrap();
        assert_eq!(
            (off.rate_limit_per_minute, off.max_active_jobs_per_caller),
            (0, 0)
        );
        let err = Settings::from_vars(vars(&[("RATE_LIMIT_BURST", "0")])).unwrap_err();
        assert!(err.to_string().contains("RATE_LIMIT_BURST"), "{err}");
        let err = Settings::from_vars(vars(&[("JOB_TTL_HOURS", "48")])).unwrap_err();
        assert!(err.to_string().contains("JOB_TTL_HOURS"), "{err}");
    }

    #[test]
    fn yt_dlp_comes_with_scdl_unless_named() {
        let s = Settings::from_vars(vars(&[("SCDL_BIN", "/venv/bin/scdl")])).unwrap();
        assert_eq!(s.yt_dlp_bin(), PathBuf::from("/venv/bin/yt-dlp"));
        let s = Settings::from_vars(vars(&[
            ("SCDL_BIN", "/venv/bin/scdl"),
            ("YT_DLP_BIN", "/opt/yt-dlp"),
        ]))
        .unwrap();
        assert_eq!(s.yt_dlp_bin(), PathBuf::from("/opt/yt-dlp"));
    }

    #[test]
    fn flags() {
        let on = |v| Settings::from_vars(vars(&[("JWT_REQUIRE_EXP", v)]));
        assert!(on("true").unwrap().jwt_require_exp);
        assert!(on("TRUE").unwrap().jwt_require_exp);
        assert!(!on("false").unwrap().jwt_require_exp);
        assert!(!on("").unwrap().jwt_require_exp);
        let err = on("maybe").unwrap_err().to_string();
        assert!(err.contains("JWT_REQUIRE_EXP"), "{err}");
    }

    #[test]
    fn bad_numbers_are_named() {
        let err = Settings::from_vars(vars(&[("MAX_TRACKS", "0")])).unwrap_err();
        assert!(err.to_string().contains("MAX_TRACKS"), "{err}");
        let err = Settings::from_vars(vars(&[("DOWNLOAD_CONCURRENCY", "four")])).unwrap_err();
        assert!(err.to_string().contains("DOWNLOAD_CONCURRENCY"), "{err}");
    }

    #[test]
    fn parameter_names_follow_the_prefix() {
        assert_eq!(
            Secret::ApiSecretKey.parameter("/xomcloud"),
            "/xomcloud/api/API_SECRET_KEY"
        );
        assert_eq!(
            Secret::SoundcloudClientId.parameter("/staging/"),
            "/staging/soundcloud/CLIENT_ID"
        );
        assert_eq!(
            Secret::SoundcloudClientSecret.parameter("/x"),
            "/x/soundcloud/CLIENT_SECRET"
        );
    }

    #[tokio::test]
    async fn env_wins_and_missing_names_the_parameter_not_a_value() {
        let env = EnvSecrets::from_vars(vars(&[("API_SECRET_KEY", "s3cret")]));
        let secrets = Secrets::new("/xomcloud").source(env);
        assert_eq!(secrets.get(Secret::ApiSecretKey).await.unwrap(), "s3cret");
        let err = secrets.get(Secret::SoundcloudClientId).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("SOUNDCLOUD_CLIENT_ID"), "{msg}");
        assert!(msg.contains("/xomcloud/soundcloud/CLIENT_ID"), "{msg}");
    }

    #[tokio::test]
    async fn empty_is_an_error() {
        let env = EnvSecrets::default().with(Secret::ApiSecretKey, "  ");
        let err = Secrets::new("/x")
            .source(env)
            .get(Secret::ApiSecretKey)
            .await
            .unwrap_err();
        assert!(matches!(err, ConfigError::Empty { .. }));
    }
}
