//! What every xomcloud binary shares: the API error type, responses with CORS, configuration
//! and secrets, storage, and logging.

pub mod config;
pub mod error;
pub mod logging;
pub mod presign;
pub mod response;
pub mod storage;

pub use error::ApiError;
