//! The `JobQueue` port: how a created job reaches a worker (SQS on AWS, a channel in `serve`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::is_job_id;

pub mod local;
pub mod sqs;

pub use local::LocalQueue;
pub use sqs::SqsQueue;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("job queue: {0}")]
pub struct QueueError(pub String);

#[async_trait]
pub trait JobQueue: Send + Sync {
    async fn send(&self, message: &JobMessage) -> Result<(), QueueError>;
}

/// Reads a message body; refuses anything but `{"job_id": "<32 hex>"}` (extra fields are
/// ignored, so a newer sender's messages still parse).
pub fn parse_message(body: &str) -> Result<JobMessage, QueueError> {
    let message: JobMessage =
        serde_json::from_str(body).map_err(|e| QueueError(format!("not a job message ({e})")))?;
    if !is_job_id(&message.job_id) {
        return Err(QueueError(format!("{:?} is not a job id", message.job_id)));
    }
    Ok(message)
}

/// The message's body on the wire.
pub fn message_body(message: &JobMessage) -> Result<String, QueueError> {
    serde_json::to_string(message).map_err(|e| QueueError(format!("cannot encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_job_id;

    #[test]
    fn a_message_round_trips() {
        let message = JobMessage {
            job_id: new_job_id(),
        };
        let body = message_body(&message).unwrap();
        assert_eq!(body, format!(r#"{{"job_id":"{}"}}"#, message.job_id));
        assert_eq!(parse_message(&body).unwrap(), message);
    }

    #[test]
    fn extra_fields_are_ignored() {
        let id = new_job_id();
        let body = format!(r#"{{"job_id":"{id}","attempt":2}}"#);
        assert_eq!(parse_message(&body).unwrap().job_id, id);
    }

    #[test]
    fn anything_else_is_refused() {
        for body in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"job_id": 5}"#,
            r#"{"job_id": "abc"}"#,
            r#"{"job_id": "0123456789ABCDEF0123456789ABCDEF"}"#,
            r#"{"id": "0123456789abcdef0123456789abcdef"}"#,
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse_message(body).is_err(), "{body:?}");
        }
    }
}
