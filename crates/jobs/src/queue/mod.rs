//! The `JobQueue` port: how a job's steps reach a worker (SQS on AWS, a channel in `serve`).
//!
//! A job is three kinds of step, each one message: `start` (resolve the links, then send one
//! `track` message per unsettled track), `track` (fetch one track into the shared cache and
//! settle it; whoever settles the last sends `assemble`) and `assemble` (stream the cached
//! tracks into the zip, mark the job done). Every step is safe to run twice.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::is_job_id;

pub mod local;
pub mod sqs;

pub use local::LocalQueue;
pub use sqs::SqsQueue;

/// One step of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Start,
    Track(usize),
    Assemble,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobMessage {
    pub job_id: String,
    pub step: Step,
}

impl JobMessage {
    pub fn start(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            step: Step::Start,
        }
    }

    pub fn track(job_id: impl Into<String>, index: usize) -> Self {
        Self {
            job_id: job_id.into(),
            step: Step::Track(index),
        }
    }

    pub fn assemble(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            step: Step::Assemble,
        }
    }
}

/// On the wire: `{"job_id"}` is a start (the body every earlier build sent),
/// `{"job_id","step":"track","track":i}`, `{"job_id","step":"assemble"}`.
#[derive(Serialize, Deserialize)]
struct Wire {
    job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    track: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("job queue: {0}")]
pub struct QueueError(pub String);

#[async_trait]
pub trait JobQueue: Send + Sync {
    async fn send(&self, message: &JobMessage) -> Result<(), QueueError>;

    /// Sends every message (a job's track messages); the SQS adapter batches them.
    async fn send_all(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        for message in messages {
            self.send(message).await?;
        }
        Ok(())
    }
}

/// Reads a message body; refuses anything but the three shapes above with a 32-hex job id
/// (extra fields are ignored, so a newer sender's messages still parse).
pub fn parse_message(body: &str) -> Result<JobMessage, QueueError> {
    let wire: Wire =
        serde_json::from_str(body).map_err(|e| QueueError(format!("not a job message ({e})")))?;
    if !is_job_id(&wire.job_id) {
        return Err(QueueError(format!("{:?} is not a job id", wire.job_id)));
    }
    let step = match (wire.step.as_deref(), wire.track) {
        (None | Some("start"), None) => Step::Start,
        (Some("track"), Some(index)) => Step::Track(index),
        (Some("assemble"), None) => Step::Assemble,
        (step, track) => {
            return Err(QueueError(format!(
                "unknown step {step:?} (track {track:?})"
            )))
        }
    };
    Ok(JobMessage {
        job_id: wire.job_id,
        step,
    })
}

/// The message's body on the wire.
pub fn message_body(message: &JobMessage) -> Result<String, QueueError> {
    let (step, track) = match message.step {
        Step::Start => (None, None),
        Step::Track(index) => (Some("track".to_owned()), Some(index)),
        Step::Assemble => (Some("assemble".to_owned()), None),
    };
    let wire = Wire {
        job_id: message.job_id.clone(),
        step,
        track,
    };
    serde_json::to_string(&wire).map_err(|e| QueueError(format!("cannot encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_job_id;

    #[test]
    fn every_step_round_trips() {
        let id = new_job_id();
        for (message, body) in [
            (JobMessage::start(&id), format!(r#"{{"job_id":"{id}"}}"#)),
            (
                JobMessage::track(&id, 7),
                format!(r#"{{"job_id":"{id}","step":"track","track":7}}"#),
            ),
            (
                JobMessage::assemble(&id),
                format!(r#"{{"job_id":"{id}","step":"assemble"}}"#),
            ),
        ] {
            assert_eq!(message_body(&message).unwrap(), body);
            assert_eq!(parse_message(&body).unwrap(), message);
        }
    }

    #[test]
    fn extra_fields_are_ignored() {
        let id = new_job_id();
        let body = format!(r#"{{"job_id":"{id}","attempt":2}}"#);
        assert_eq!(parse_message(&body).unwrap(), JobMessage::start(id));
    }

    #[test]
    fn anything_else_is_refused() {
        let id = new_job_id();
        for body in [
            "".to_owned(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            r#"{"job_id": 5}"#.into(),
            r#"{"job_id": "abc"}"#.into(),
            r#"{"job_id": "0123456789ABCDEF0123456789ABCDEF"}"#.into(),
            r#"{"id": "0123456789abcdef0123456789abcdef"}"#.into(),
            "0123456789abcdef0123456789abcdef".into(),
            format!(r#"{{"job_id":"{id}","step":"track"}}"#),
            format!(r#"{{"job_id":"{id}","step":"track","track":-1}}"#),
            format!(r#"{{"job_id":"{id}","step":"assemble","track":1}}"#),
            format!(r#"{{"job_id":"{id}","track":1}}"#),
            format!(r#"{{"job_id":"{id}","step":"zip"}}"#),
        ] {
            assert!(parse_message(&body).is_err(), "{body:?}");
        }
    }
}
