//! Asynchronous download jobs: the job model and its allowed state changes (`model`), where
//! jobs are kept (`store`: DynamoDB or SQLite) and how they reach a worker (`queue`: SQS or an
//! in-process channel), and the per-caller rate limits on creating them (`limiter`).

pub mod limiter;
pub mod model;
pub mod queue;
pub mod store;

pub use model::{
    is_job_id, new_job_id, Job, JobStatus, Outcome, TrackRecord, TrackSpec, TrackState,
    TrackUpdate, JOB_ID_LEN,
};
pub use queue::{parse_message, JobMessage, JobQueue, LocalQueue, QueueError, SqsQueue, Step};
pub use store::{Created, DynamoStore, JobStore, Settled, SqliteStore, StoreError};
