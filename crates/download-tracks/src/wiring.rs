//! Builds the Lambda functions' parts from the settings, once per cold start: S3 storage,
//! secrets (env → SSM), and, when `JOBS_TABLE` and `JOBS_QUEUE_URL` are set, the DynamoDB job
//! store and the SQS queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use xomcloud_common::config::{aws_config, env_then_ssm, ConfigError, Settings};
use xomcloud_common::response::Cors;
use xomcloud_common::storage::{S3Storage, Storage};
use xomcloud_jobs::queue::{JobQueue, SqsQueue};
use xomcloud_jobs::store::{DynamoStore, JobStore};

use crate::jobs::worker::Worker;
use crate::jobs::{JobRunner, JobsApi};
use crate::lambda::Http;
use crate::service::DownloadService;

/// The image command (`_HANDLER`) that makes the download image the jobs worker.
pub const WORKER_HANDLER: &str = "jobs-worker";

pub struct Aws {
    pub settings: Settings,
    pub storage: Arc<dyn Storage>,
    pub download: Arc<DownloadService>,
    pub jobs: Option<(Arc<dyn JobStore>, Arc<dyn JobQueue>)>,
}

pub async fn aws() -> Result<Aws, ConfigError> {
    let settings = Settings::from_env()?;
    let sdk = aws_config().await;
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(
        &sdk,
        settings.bucket_or_default(),
        settings.s3_endpoint.is_some(),
    ));
    let download = Arc::new(DownloadService::new(
        &settings,
        storage.clone(),
        env_then_ssm(&sdk, &settings.ssm_prefix),
    ));
    let jobs = match (&settings.jobs_table, &settings.jobs_queue_url) {
        (Some(table), Some(queue)) => Some((
            Arc::new(DynamoStore::from_sdk(&sdk, table)) as Arc<dyn JobStore>,
            Arc::new(SqsQueue::from_sdk(&sdk, queue)) as Arc<dyn JobQueue>,
        )),
        _ => None,
    };
    Ok(Aws {
        settings,
        storage,
        download,
        jobs,
    })
}

/// The jobs API over any store and queue (the Lambda's, or `xomcloud serve`'s embedded ones).
pub fn jobs_api(
    settings: &Settings,
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    storage: Arc<dyn Storage>,
) -> JobsApi {
    JobsApi {
        store,
        queue,
        storage,
        max_tracks: settings.max_job_tracks,
        ttl: settings.job_ttl,
        presign_expiry: settings.presigned_expiry,
        cors: Cors::new(settings.cors_allow_origin.as_deref()),
    }
}

pub fn runner(
    settings: &Settings,
    store: Arc<dyn JobStore>,
    storage: Arc<dyn Storage>,
) -> JobRunner {
    JobRunner::new(
        store,
        storage,
        settings.concurrency,
        settings.track_timeout,
        settings.track_retry_pause,
    )
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
