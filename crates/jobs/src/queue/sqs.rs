//! `JobQueue` on SQS: one message per job, its body the `JobMessage` JSON.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::Client;

use super::{message_body, JobMessage, JobQueue, QueueError};

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// A queue on a client built from the shared SDK configuration (region, credentials,
    /// `AWS_ENDPOINT_URL_SQS`).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), queue_url)
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, message: &JobMessage) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message_body(message)?)
            .send()
            .await
            .map_err(|e| QueueError(format!("SendMessage: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }
}
