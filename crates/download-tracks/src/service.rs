//! The `/download` endpoint without any transport: the Lambda and the local server both call
//! `DownloadService::handle` with a method, a body, the authorizer's principal and the client's
//! address (for the per-caller rate limit).

use std::sync::Arc;

use http::{Method, Response};
use xomcloud_common::config::{ConfigError, Secret, Secrets, Settings};
use xomcloud_common::response::Cors;
use xomcloud_common::storage::Storage;
use xomcloud_common::ApiError;

use crate::limits::Limits;
use crate::pipeline::{DownloadResult, Pipeline, Progress};
use crate::resolve::YtDlpLookup;
use crate::scdl::{ScdlFetcher, TrackFetcher};
use crate::shortlink::ShortLinks;
use crate::validate::{key_owner, parse_request, Track};

/// Longest wait for on.soundcloud.com to say where a short link leads.
const SHORT_LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct DownloadService {
    pub pipeline: Pipeline,
    pub secrets: Secrets,
    /// The fetcher's settings; the client id is filled in per request (it may rotate).
    pub scdl: ScdlFetcher,
    /// The resolver's settings; the client id is filled in per job.
    pub yt_dlp: YtDlpLookup,
    pub max_tracks: usize,
    pub cors: Cors,
    /// Per-caller rate limit on downloads (off unless [`DownloadService::with_limits`]).
    pub limits: Limits,
}

impl DownloadService {
    pub fn new(settings: &Settings, storage: Arc<dyn Storage>, secrets: Secrets) -> Self {
        let short_links = ShortLinks::new(settings.short_link_base.clone(), SHORT_LINK_TIMEOUT);
        Self {
            pipeline: Pipeline::new(storage, settings.concurrency, settings.presigned_expiry),
            secrets,
            scdl: ScdlFetcher {
                scdl_bin: settings.scdl_bin.clone(),
                ffmpeg_bin: settings.ffmpeg_bin.clone(),
                client_id: None,
                timeout: settings.track_timeout,
                short_links: short_links.clone(),
            },
            yt_dlp: YtDlpLookup {
                yt_dlp_bin: settings.yt_dlp_bin(),
                client_id: None,
                timeout: settings.track_timeout,
                temp_root: std::env::temp_dir(),
                short_links,
            },
            max_tracks: settings.max_tracks,
            cors: Cors::new(settings.cors_allow_origin.as_deref()),
            limits: Limits::off(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// `address` is the client's (API Gateway's `sourceIp`, serve's peer); with the principal it
    /// names the caller whose bucket a valid request draws from.
    pub async fn handle(
        &self,
        method: &Method,
        body: &[u8],
        principal: Option<&str>,
        address: Option<&str>,
    ) -> Response<String> {
        match *method {
            Method::OPTIONS => self.cors.preflight(),
            Method::POST => {
                let request = match parse_request(body, self.max_tracks) {
                    Ok(request) => request,
                    Err(err) => return self.cors.error(&err),
                };
                let caller = xomcloud_jobs::limiter::caller_key(principal, address);
                let budget = match self.limits.admit(&caller, &self.cors).await {
                    Ok(budget) => budget,
                    Err(refused) => return refused,
                };
                let mut response = match self.post(request, principal).await {
                    Ok(result) => self.cors.ok(Some(serde_json::json!(result))),
                    Err(err) => self.cors.error(&err),
                };
                budget.stamp(&mut response);
                response
            }
            _ => self.cors.error(&ApiError::NotFound(format!(
                "{method} is not supported; use POST"
            ))),
        }
    }

    async fn post(
        &self,
        request: crate::validate::DownloadRequest,
        principal: Option<&str>,
    ) -> Result<DownloadResult, ApiError> {
        let owner = key_owner(principal, request.username.as_deref());
        tracing::info!(tracks = request.tracks.len(), "download requested");
        let result = self
            .download(&request.tracks, &owner, crate::pipeline::no_progress())
            .await?;
        tracing::info!(
            successful = result.successful,
            failed = result.failed_count,
            key = %result.key,
            "download finished"
        );
        Ok(result)
    }

    /// Runs the pipeline for already validated tracks.
    pub async fn download(
        &self,
        tracks: &[Track],
        owner: &str,
        progress: Progress,
    ) -> Result<DownloadResult, ApiError> {
        let fetcher = self.fetcher().await;
        self.pipeline.run(tracks, owner, fetcher, progress).await
    }

    /// A fetcher with the current SoundCloud client id (it may rotate).
    pub async fn fetcher(&self) -> Arc<dyn TrackFetcher> {
        Arc::new(ScdlFetcher {
            client_id: self.client_id().await,
            ..self.scdl.clone()
        })
    }

    /// A job's link resolver (the yt-dlp that scdl brings) with the current client id.
    pub async fn lookup(&self) -> YtDlpLookup {
        YtDlpLookup {
            client_id: self.client_id().await,
            ..self.yt_dlp.clone()
        }
    }

    async fn client_id(&self) -> Option<String> {
        match self.secrets.get(Secret::SoundcloudClientId).await {
            Ok(id) => Some(id),
            // Not configured at all is a supported setup: scdl generates its own id.
            Err(ConfigError::MissingSecret { .. }) => {
                tracing::info!("SOUNDCLOUD_CLIENT_ID is not configured; scdl will generate one");
                None
            }
            // Configured but unreadable (SSM denied or throttled, a blank value) is a fault to
            // fix, not a choice: say so loudly (the error names the cause, never the value).
            Err(err) => {
                tracing::error!(error = %err, "SoundCloud client id is configured but unusable; scdl will generate one");
                None
            }
        }
    }
}
