#![allow(dead_code)]
//! Shared helpers of the end-to-end tests: the compiled Lambda binaries, a Lambda Runtime API
//! to drive them, and the test tools (moto) they talk to.

pub mod bench;
pub mod bins;
pub mod jobs_lambda;
pub mod logs;
pub mod media;
pub mod moto;
pub mod proctree;
pub mod runtime_api;
pub mod s3;
pub mod serve;
pub mod soundcloud_api;
pub mod stub;
pub mod zips;
