//! The jobs worker Lambda: SQS records (batch size 1, `ReportBatchItemFailures`) from the jobs
//! queue (start and assemble steps) and the track queue (one track each) → steps; the messages a
//! step asks for are sent before its record is acknowledged. A record from the dead-letter queue
//! fails its job (a start or assemble step) or its track (a track step, counted like any other,
//! so the job still finishes); a failed step is reported so SQS delivers the message again.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tokio::time::Instant;
use xomcloud_jobs::queue::{parse_message, JobMessage, JobQueue, Step};

use crate::jobs::runner::JobRunner;
use crate::service::DownloadService;

/// The job-level error of a job whose message ended in the dead-letter queue.
pub const DEAD_LETTER_ERROR: &str =
    "The job could not be completed: its worker failed repeatedly. Please try again.";

pub struct Worker {
    pub runner: JobRunner,
    pub queue: Arc<dyn JobQueue>,
    /// For the fetcher and the resolver (scdl and yt-dlp settings, the SoundCloud client id).
    pub download: Arc<DownloadService>,
    /// Records from this queue are dead letters.
    pub dead_letter_arn: Option<String>,
}

impl Worker {
    pub async fn handle(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            if let Err(why) = self.record(&record, deadline).await {
                tracing::warn!(message = ?record.message_id, error = %why, "message not processed");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = record.message_id.clone().unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    async fn record(&self, record: &SqsMessage, deadline: Instant) -> Result<(), String> {
        let body = record.body.as_deref().unwrap_or_default();
        let message = match parse_message(body) {
            Ok(message) => message,
            // Nothing to run and nothing to mark: retrying cannot help.
            Err(e) => {
                tracing::error!(error = %e, "dropping a malformed job message");
                return Ok(());
            }
        };
        let dead = self.dead_letter_arn.is_some()
            && record.event_source_arn.as_deref() == self.dead_letter_arn.as_deref();
        let next = if dead {
            self.bury(&message).await?
        } else {
            let fetcher = self.download.fetcher().await;
            let lookup = self.download.lookup().await;
            self.runner
                .step(&message, fetcher, &lookup, Some(deadline))
                .await
                .map_err(|e| e.to_string())?
        };
        self.queue
            .send_all(&next)
            .await
            .map_err(|e| format!("sending the next steps: {e}"))
    }

    async fn bury(&self, message: &JobMessage) -> Result<Vec<JobMessage>, String> {
        let job_id = &message.job_id;
        if let Step::Track(index) = message.step {
            tracing::error!(job = %job_id, track = index, "dead-lettered track marked failed");
            return self
                .runner
                .bury_track(job_id, index)
                .await
                .map_err(|e| e.to_string());
        }
        let marked = self
            .runner
            .fail(job_id, DEAD_LETTER_ERROR)
            .await
            .map_err(|e| e.to_string())?;
        tracing::error!(job = %job_id, marked, "dead-lettered job marked failed");
        Ok(Vec::new())
    }
}
