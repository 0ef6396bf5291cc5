//! One request's work: fetch tracks (at most `concurrency` at once), append each finished file
//! to a zip streamed into storage as parts, delete it, and answer with a download link.
//! Memory holds at most `concurrency + 1` parts; temp disk holds at most `concurrency` tracks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use xomcloud_common::storage::{PartWriter, Storage, MIN_PART_SIZE};
use xomcloud_common::ApiError;

use crate::naming::assign_names;
use crate::scdl::{FetchError, TrackFetcher};
use crate::validate::Track;
use crate::zip_stream::{append_file, Checked, ZipStream};

pub const ZIP_NAME: &str = "xomcloud-tracks.zip";

/// A track's reason when its fetched file cannot be read back.
pub const UNREADABLE: &str = "The downloaded file could not be read";

/// A track's progress, observable from outside (CLI progress bars, a job status endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackState {
    Queued,
    Downloading,
    Done,
    Failed(String),
}

pub type Progress = Arc<dyn Fn(usize, &TrackState) + Send + Sync>;

pub fn no_progress() -> Progress {
    Arc::new(|_, _| {})
}

pub struct Pipeline {
    pub storage: Arc<dyn Storage>,
    pub concurrency: usize,
    pub presign_expiry: Duration,
    /// Where each request makes its temp dir (removed on every path).
    pub temp_root: PathBuf,
    pub part_size: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrackRef {
    pub id: String,
    pub title: String,
    pub artist: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedTrack {
    pub id: String,
    pub title: String,
    pub artist: String,
    pub error: String,
}

/// The `data` of a 200 answer, in the seed API's shape.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadResult {
    pub download_url: String,
    pub expires_in: u64,
    pub total: usize,
    pub successful: usize,
    pub failed_count: usize,
    pub failed: Vec<FailedTrack>,
    pub tracks_downloaded: Vec<TrackRef>,
    /// Where the zip was stored (not part of the API answer).
    #[serde(skip)]
    pub key: String,
}

fn track_ref(t: &Track) -> TrackRef {
    TrackRef {
        id: t.id.clone(),
        title: t.title.clone(),
        artist: t.artist.clone(),
    }
}

/// `{owner}/{YYYYmmdd_HHMMSS}-{8 hex}/xomcloud-tracks.zip`
pub fn object_key(owner: &str, now: time::OffsetDateTime) -> String {
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]_[hour][minute][second]"
        ))
        .unwrap_or_default();
    format!("{owner}/{stamp}-{:08x}/{ZIP_NAME}", rand::random::<u32>())
}

/// A track index, its temp dir, and the fetched file (checksummed) or why it failed.
type Fetched = (usize, PathBuf, Result<std::io::Result<Checked>, FetchError>);

impl Pipeline {
    pub fn new(storage: Arc<dyn Storage>, concurrency: usize, presign_expiry: Duration) -> Self {
        Self {
            storage,
            concurrency: concurrency.max(1),
            presign_expiry,
            temp_root: std::env::temp_dir(),
            part_size: MIN_PART_SIZE,
        }
    }

    pub async fn run(
        &self,
        tracks: &[Track],
        owner: &str,
        fetcher: Arc<dyn TrackFetcher>,
        progress: Progress,
    ) -> Result<DownloadResult, ApiError> {
        let temp = tempfile::Builder::new()
            .prefix("xomcloud-")
            .tempdir_in(&self.temp_root)
            .map_err(|e| ApiError::internal(format!("temp dir: {e}")))?;
        let key = object_key(owner, time::OffsetDateTime::now_utc());
        let upload = self
            .storage
            .create_upload(&key)
            .await
            .map_err(ApiError::internal)?;
        // As many parts in flight as tracks: a batch of tracks finishing together is handed
        // over without waiting for the network.
        let mut sink = PartWriter::new(upload, self.part_size, self.concurrency);
        let mut tasks = JoinSet::new();
        let result = self
            .fetch_into(
                tracks,
                temp.path(),
                fetcher,
                &progress,
                &mut sink,
                &mut tasks,
            )
            .await;
        // Stop and reap whatever still runs (their process groups die with them) before the
        // temp dir goes.
        tasks.shutdown().await;
        let errors = match result {
            Ok(errors) => errors,
            Err(err) => {
                if let Err(abort) = sink.abort().await {
                    tracing::warn!(error = %abort, "aborting the upload failed");
                }
                return Err(err);
            }
        };
        let total = tracks.len();
        let failed: Vec<FailedTrack> = tracks
            .iter()
            .zip(&errors)
            .filter_map(|(t, e)| {
                Some(FailedTrack {
                    id: t.id.clone(),
                    title: t.title.clone(),
                    artist: t.artist.clone(),
                    error: e.clone()?,
                })
            })
            .collect();
        if failed.len() == total {
            if let Err(abort) = sink.abort().await {
                tracing::warn!(error = %abort, "aborting the upload failed");
            }
            return Err(ApiError::Download {
                message: format!("All {total} downloads failed"),
                details: Some(json!(failed)),
            });
        }
        let tracks_downloaded: Vec<TrackRef> = tracks
            .iter()
            .zip(&errors)
            .filter(|(_, e)| e.is_none())
            .map(|(t, _)| track_ref(t))
            .collect();
        sink.finish().await.map_err(ApiError::internal)?;
        let download_url = self
            .storage
            .presign_get(&key, self.presign_expiry)
            .await
            .map_err(ApiError::internal)?;
        drop(temp);
        Ok(DownloadResult {
            download_url,
            expires_in: self.presign_expiry.as_secs(),
            total,
            successful: tracks_downloaded.len(),
            failed_count: failed.len(),
            failed,
            tracks_downloaded,
            key,
        })
    }

    /// Runs the fetches and appends each finished file; returns each track's error, if any.
    /// On success the zip's central directory has been written to `sink` (not yet finished).
    async fn fetch_into(
        &self,
        tracks: &[Track],
        temp: &Path,
        fetcher: Arc<dyn TrackFetcher>,
        progress: &Progress,
        sink: &mut PartWriter,
        tasks: &mut JoinSet<(Fetched, tokio::sync::OwnedSemaphorePermit)>,
    ) -> Result<Vec<Option<String>>, ApiError> {
        let names = assign_names(tracks);
        // A permit is held from the fetch until the file is appended and deleted: that bounds
        // temp disk to `concurrency` tracks even when the upload is slower than the downloads.
        let slots = Arc::new(Semaphore::new(self.concurrency));
        for (i, track) in tracks.iter().enumerate() {
            progress(i, &TrackState::Queued);
            let slots = slots.clone();
            let fetcher = fetcher.clone();
            let progress = progress.clone();
            let url = track.url.clone();
            let dir = temp.join(i.to_string());
            tasks.spawn(async move {
                let permit = slots
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                progress(i, &TrackState::Downloading);
                let result = match fetcher.fetch(&url, &dir).await {
                    Ok(file) => Ok(Checked::file(file).await),
                    Err(reason) => Err(reason),
                };
                ((i, dir, result), permit)
            });
        }
        let mut zip = ZipStream::default();
        let mut errors = vec![None; tracks.len()];
        let mut cleanups = JoinSet::new();
        while let Some(joined) = tasks.join_next().await {
            let ((i, dir, result), permit) =
                joined.map_err(|e| ApiError::internal(format!("fetch task: {e}")))?;
            // A fetched file that cannot be read fails its track only: nothing of it has been
            // appended yet, so the others can still make a zip.
            let result = match result {
                Ok(Err(e)) => {
                    tracing::warn!(track = i, error = %e, "the fetched file could not be read");
                    Err(FetchError::Failed(UNREADABLE.into()))
                }
                Ok(Ok(file)) => Ok(file),
                Err(reason) => Err(reason),
            };
            match result {
                Ok(file) => {
                    tracing::debug!(track = i, "fetched");
                    append_file(&mut zip, sink, &names[i], file)
                        .await
                        .map_err(ApiError::internal)?;
                    tracing::debug!(track = i, "appended");
                    progress(i, &TrackState::Done);
                }
                Err(reason) => {
                    let reason = reason.to_string();
                    tracing::info!(track = i, error = %reason, "track failed");
                    progress(i, &TrackState::Failed(reason.clone()));
                    errors[i] = Some(reason);
                }
            }
            // Removed beside the next append rather than before it (tracks finishing together
            // would queue behind each other's removal); the slot is released once it is gone.
            cleanups.spawn(async move {
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(error = %e, "could not remove a track's temp dir");
                    }
                }
                drop(permit);
            });
            while cleanups.try_join_next().is_some() {}
        }
        while cleanups.join_next().await.is_some() {}
        if errors.iter().any(Option::is_none) {
            sink.write(&zip.finish())
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use xomcloud_common::presign::LinkSigner;
    use xomcloud_common::storage::LocalStorage;

    /// Writes an MP3-ish file, except for URLs naming a path that cannot be read.
    struct Fake;

    #[async_trait]
    impl TrackFetcher for Fake {
        async fn fetch(&self, url: &str, dir: &Path) -> Result<PathBuf, FetchError> {
            tokio::fs::create_dir_all(dir).await.unwrap();
            if url.ends_with("missing") {
                return Ok(dir.join("gone.mp3"));
            }
            if url.ends_with("directory") {
                let sub = dir.join("track.mp3");
                tokio::fs::create_dir(&sub).await.unwrap();
                return Ok(sub);
            }
            let file = dir.join("track.mp3");
            tokio::fs::write(&file, b"ID3 fake audio").await.unwrap();
            Ok(file)
        }
    }

    fn track(id: &str, slug: &str) -> Track {
        Track {
            id: id.into(),
            url: format!("https://soundcloud.com/a/{slug}"),
            title: format!("T{id}"),
            artist: "A".into(),
        }
    }

    #[tokio::test]
    async fn an_unreadable_fetched_file_fails_its_track_only() {
        let root = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(
            root.path().join("data"),
            "http://127.0.0.1:1",
            LinkSigner::new(b"k"),
        );
        let mut pipeline = Pipeline::new(Arc::new(storage), 2, Duration::from_secs(60));
        pipeline.temp_root = root.path().to_owned();
        let tracks = [
            track("1", "ok"),
            track("2", "missing"),
            track("3", "directory"),
        ];
        let result = pipeline
            .run(&tracks, "owner", Arc::new(Fake), no_progress())
            .await
            .expect("the readable track still makes a zip");
        assert_eq!(result.successful, 1);
        let failed: Vec<(&str, &str)> = result
            .failed
            .iter()
            .map(|f| (f.id.as_str(), f.error.as_str()))
            .collect();
        assert_eq!(failed, [("2", UNREADABLE), ("3", UNREADABLE)]);
    }
}
