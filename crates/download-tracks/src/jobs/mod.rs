//! Download jobs: the HTTP side (`api`), the work (`runner`) and the SQS-triggered Lambda
//! (`worker`). The store and the queue are ports of `xomcloud-jobs`.

pub mod api;
pub mod runner;
pub mod worker;

pub use api::{JobsApi, JobsRequest};
pub use runner::{JobRunner, RunOutcome};
