//! The download Lambda's library: validate a request, fetch each track with scdl, stream the
//! zip into storage, answer with a download link. No AWS types here: storage is a trait.

pub mod lambda;
pub mod naming;
pub mod pipeline;
pub mod scdl;
pub mod service;
pub mod validate;
pub mod zip_stream;
