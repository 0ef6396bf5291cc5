//! Builds the Lambda functions' parts from the settings, once per cold start: S3 storage,
//! secrets (env → SSM), and, when `JOBS_TABLE` and `JOBS_QUEUE_URL` are set, the DynamoDB job
//! store and the SQS queues (track steps on `TRACK_QUEUE_URL` when set). The per-caller rate
//! limits keep their buckets in `JOBS_TABLE`: without it they are off (the stage's throttling
//! still applies).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use xomcloud_common::config::{aws_config, env_then_ssm, ConfigError, Settings};
use xomcloud_common::response::Cors;
use xomcloud_common::storage::{S3Storage, Storage};
use xomcloud_jobs::limiter::{Bucket, DynamoLimiter};
use xomcloud_jobs::queue::{JobQueue, SqsQueue};
use xomcloud_jobs::store::{DynamoStore, JobStore};

use crate::jobs::worker::Worker;
use crate::jobs::{JobRunner, JobsApi};
use crate::lambda::Http;
use crate::limits::Limits;
use crate::service::DownloadService;

/// The image command (`_HANDLER`) that makes the download image the jobs worker.
pub const WORKER_HANDLER: &str = "jobs-worker";

pub struct Aws {
    pub settings: Settings,
    pub storage: Arc<dyn Storage>,
    pub download: Arc<DownloadService>,
    pub jobs: Option<(Arc<dyn JobStore>, Arc<dyn JobQueue>)>,
    pub limits: Limits,
}

pub async fn aws() -> Result<Aws, ConfigError> {
    let settings = Settings::from_env()?;
    let sdk = aws_config().await;
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(
        &sdk,
        settings.bucket_or_default(),
        settings.s3_endpoint.is_some(),
    ));
    let limits = aws_limits(&settings, |table, bucket| {
        DynamoLimiter::from_sdk(&sdk, table, bucket)
    });
    let download = Arc::new(
        DownloadService::new(
            &settings,
            storage.clone(),
            env_then_ssm(&sdk, &settings.ssm_prefix),
        )
        .with_limits(limits.clone()),
    );
    let jobs = match (&settings.jobs_table, &settings.jobs_queue_url) {
        (Some(table), Some(queue)) => Some((
            Arc::new(
                DynamoStore::from_sdk(&sdk, table)
                    .with_active_limit(settings.max_active_jobs_per_caller),
            ) as Arc<dyn JobStore>,
            Arc::new(
                SqsQueue::from_sdk(&sdk, queue).with_track_queue(settings.track_queue_url.clone()),
            ) as Arc<dyn JobQueue>,
        )),
        _ => None,
    };
    Ok(Aws {
        settings,
        storage,
        download,
        jobs,
        limits,
    })
}

/// The buckets live in the jobs table; without one (the Terraform-made function as it is) only
/// the stage's throttling limits callers, and the start-up log says so.
fn aws_limits(settings: &Settings, dynamo: impl FnOnce(&str, Bucket) -> DynamoLimiter) -> Limits {
    let bucket = Bucket::new(settings.rate_limit_per_minute, settings.rate_limit_burst);
    match (bucket, &settings.jobs_table) {
        (Some(bucket), Some(table)) => {
            tracing::info!(
                per_minute = bucket.per_minute(),
                burst = bucket.burst(),
                "per-caller rate limits on, buckets in JOBS_TABLE"
            );
            Limits::new(Arc::new(dynamo(table, bucket)))
        }
        (Some(_), None) => {
            tracing::info!(
                "per-caller rate limits are off: no JOBS_TABLE to keep them in (API Gateway's \
                 stage throttling still applies)"
            );
            Limits::off()
        }
        (None, _) => {
            tracing::info!("per-caller rate limits are off: RATE_LIMIT_PER_MINUTE=0");
            Limits::off()
        }
    }
}

/// The jobs API over any store and queue (the Lambda's, or `xomcloud serve`'s embedded ones),
/// drawing from the same rate limits as `/download`.
pub fn jobs_api(
    settings: &Settings,
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    storage: Arc<dyn Storage>,
    limits: Limits,
) -> JobsApi {
    JobsApi {
        store,
        queue,
        storage,
        max_tracks: settings.max_job_tracks,
        ttl: settings.job_ttl,
        presign_expiry: settings.presigned_expiry,
        cors: Cors::new(settings.cors_allow_origin.as_deref()),
        limits,
        max_active_jobs: settings.max_active_jobs_per_caller,
    }
}

pub fn runner(
    settings: &Settings,
    store: Arc<dyn JobStore>,
    storage: Arc<dyn Storage>,
) -> JobRunner {
    JobRunner {
        max_tracks: settings.max_job_tracks,
        ..JobRunner::new(
            store,
            storage,
            settings.concurrency,
            settings.track_timeout,
            settings.track_retry_pause,
        )
    }
}

impl Aws {
    pub fn http(&self) -> Http {
        Http {
            download: self.download.clone(),
            jobs: self.jobs.as_ref().map(|(store, queue)| {
                jobs_api(
                    &self.settings,
                    store.clone(),
                    queue.clone(),
                    self.storage.clone(),
                    self.limits.clone(),
                )
            }),
        }
    }

    pub fn worker(&self) -> Result<Worker, ConfigError> {
        let Some((store, queue)) = &self.jobs else {
            return Err(ConfigError::Invalid {
                name: "JOBS_TABLE",
                value: String::new(),
                expected: "the jobs worker needs JOBS_TABLE and JOBS_QUEUE_URL",
            });
        };
        Ok(Worker {
            runner: runner(&self.settings, store.clone(), self.storage.clone()),
            queue: queue.clone(),
            download: self.download.clone(),
            dead_letter_arn: self.settings.jobs_dlq_arn.clone(),
        })
    }
}

/// The invocation deadline (milliseconds since the epoch) as an `Instant`.
pub fn deadline(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
