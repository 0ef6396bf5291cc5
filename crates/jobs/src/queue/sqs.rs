//! `JobQueue` on SQS: one message per step, its body the `JobMessage` JSON. Track messages go to
//! the track queue when there is one (its event source mapping bounds how many tracks are
//! fetched at once), every other step to the jobs queue.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

use super::{message_body, JobMessage, JobQueue, QueueError, Step};

/// SendMessageBatch's limit.
const BATCH: usize = 10;

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    track_queue_url: Option<String>,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            track_queue_url: None,
        }
    }

    /// A queue on a client built from the shared SDK configuration (region, credentials,
    /// `AWS_ENDPOINT_URL_SQS`).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), queue_url)
    }

    /// Track messages go to `url` (else to the jobs queue).
    pub fn with_track_queue(mut self, url: Option<String>) -> Self {
        self.track_queue_url = url;
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn url_for(&self, message: &JobMessage) -> &str {
        match (message.step, &self.track_queue_url) {
            (Step::Track(_), Some(url)) => url,
            _ => &self.queue_url,
        }
    }

    async fn send_batch(&self, url: &str, messages: &[JobMessage]) -> Result<(), QueueError> {
        let mut entries = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            entries.push(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(message_body(message)?)
                    .build()
                    .map_err(|e| QueueError(format!("SendMessageBatch entry: {e}")))?,
            );
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError(format!("SendMessageBatch: {}", DisplayErrorContext(&e))))?;
        // Entries refused one by one (throttling) are sent again on their own.
        for failed in out.failed() {
            let message = failed
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| messages.get(i))
                .ok_or_else(|| QueueError(format!("SendMessageBatch: unknown entry {failed:?}")))?;
            self.send(message).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, message: &JobMessage) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(self.url_for(message))
            .message_body(message_body(message)?)
            .send()
            .await
            .map_err(|e| QueueError(format!("SendMessage: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }

    async fn send_all(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        let mut start = 0;
        while start < messages.len() {
            // One batch holds messages for one queue, at most ten.
            let url = self.url_for(&messages[start]);
            let len = messages[start..]
                .iter()
                .take(BATCH)
                .take_while(|m| self.url_for(m) == url)
                .count();
            self.send_batch(url, &messages[start..start + len]).await?;
            start += len;
        }
        Ok(())
    }
}
