//! The download Lambda's library: validate a request, fetch each track with scdl, stream the
//! zip into storage, answer with a download link; download jobs on top of the same steps. No AWS
//! SDK types here: storage, the job store and the queue are traits.

pub mod jobs;
pub mod lambda;
pub mod limits;
pub mod naming;
pub mod pipeline;
pub mod resolve;
pub mod scdl;
pub mod service;
pub mod shortlink;
pub mod validate;
pub mod wiring;
pub mod zip_stream;
