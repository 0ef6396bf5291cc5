//! The jobs worker Lambda: SQS records (batch size 1, `ReportBatchItemFailures`) → runs. A run
//! that runs short of time puts the job back on the queue; a record from the dead-letter queue
//! marks its job failed; a failed run is reported so SQS delivers the message again.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tokio::time::Instant;
use xomcloud_jobs::queue::{parse_message, JobQueue};

use crate::jobs::runner::{JobRunner, RunOutcome};
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
        if dead {
            return self.bury(&message.job_id).await;
        }
        let fetcher = self.download.fetcher().await;
        let lookup = self.download.lookup().await;
        match self
            .runner
            .run(&message.job_id, fetcher, &lookup, Some(deadline))
            .await
        {
            Ok(RunOutcome::Settled(status)) => {
                tracing::info!(job = %message.job_id, status = ?status, "run finished");
                Ok(())
            }
            Ok(RunOutcome::HandBack) => self
                .queue
                .send(&message)
                .await
                .map_err(|e| format!("handing the job back: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn bury(&self, job_id: &str) -> Result<(), String> {
        let marked = self
            .runner
            .fail(job_id, DEAD_LETTER_ERROR)
            .await
            .map_err(|e| e.to_string())?;
        tracing::error!(job = job_id, marked, "dead-lettered job marked failed");
        Ok(())
    }
}
