//! Download jobs: the HTTP side (`api`), the steps of the work (`runner`, one track: `track`)
//! and the SQS-triggered Lambda (`worker`). The store and the queue are ports of
//! `xomcloud-jobs`.

pub mod api;
pub mod cache;
pub mod runner;
mod track;
pub mod worker;

pub use api::{JobsApi, JobsRequest};
pub use runner::{JobRunner, RunError};

use xomcloud_jobs::model::TrackSpec;

use crate::validate::Track;

/// A validated track as a job stores it, and back: the same four fields.
impl From<Track> for TrackSpec {
    fn from(t: Track) -> Self {
        Self {
            id: t.id,
            url: t.url,
            title: t.title,
            artist: t.artist,
            cache_key: None,
        }
    }
}

impl From<&TrackSpec> for Track {
    fn from(spec: &TrackSpec) -> Self {
        Self {
            id: spec.id.clone(),
            url: spec.url.clone(),
            title: spec.title.clone(),
            artist: spec.artist.clone(),
        }
    }
}
