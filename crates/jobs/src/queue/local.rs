//! `JobQueue` in process, for `xomcloud serve`: its dispatcher holds the receiving end.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{JobMessage, JobQueue, QueueError};

#[derive(Clone, Debug)]
pub struct LocalQueue {
    sender: mpsc::UnboundedSender<JobMessage>,
}

impl LocalQueue {
    /// Unbounded: a message is a job id and a step, and the jobs themselves are bounded by the
    /// store.
    pub fn new() -> (LocalQueue, mpsc::UnboundedReceiver<JobMessage>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (LocalQueue { sender }, receiver)
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn send(&self, message: &JobMessage) -> Result<(), QueueError> {
        self.sender
            .send(message.clone())
            .map_err(|_| QueueError("the local runner has stopped".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_job_id;

    #[tokio::test]
    async fn messages_arrive_in_order() {
        let (queue, mut receiver) = LocalQueue::new();
        let messages: Vec<JobMessage> =
            (0..3).map(|i| JobMessage::track(new_job_id(), i)).collect();
        for message in &messages {
            queue.send(message).await.unwrap();
        }
        for message in &messages {
            assert_eq!(receiver.recv().await.as_ref(), Some(message));
        }
    }

    #[tokio::test]
    async fn sending_without_a_receiver_fails() {
        let (queue, receiver) = LocalQueue::new();
        drop(receiver);
        let err = queue
            .send(&JobMessage::start(new_job_id()))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "job queue: the local runner has stopped");
    }
}
