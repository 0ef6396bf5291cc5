//! One track of a job step (`runner.rs`): taken from the shared track cache, or fetched under
//! the cache key's lease and stored there whole, with its size and CRC-32.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xomcloud_common::storage::{ObjectMeta, Storage, StorageError};
use xomcloud_jobs::model::{unix_now, TrackState, TrackUpdate};
use xomcloud_jobs::store::JobStore;

use crate::jobs::cache::cache_object;
use crate::jobs::runner::RunError;
use crate::scdl::{FetchError, TrackFetcher};
use crate::zip_stream::Checked;

/// The reasons worth one more try: SoundCloud's rate limit, the network, a broken stream, a
/// timeout.
fn is_passing(reason: &FetchError) -> bool {
    matches!(
        reason,
        FetchError::RateLimited
            | FetchError::Unreachable
            | FetchError::StreamFailed
            | FetchError::TimedOut(_)
    )
}

/// One track of a job: from the cache, or fetched (one retry for a passing failure) under the
/// cache key's lease and stored in the cache. Progress is recorded as it goes; the settled state
/// is returned for the caller to settle and count.
pub(crate) struct TrackWork {
    pub store: Arc<dyn JobStore>,
    pub storage: Arc<dyn Storage>,
    pub fetcher: Arc<dyn TrackFetcher>,
    pub job_id: String,
    pub index: usize,
    pub url: String,
    /// The track's cache key (`cache.rs`): SoundCloud's id or its URL's, never the client's id.
    pub key: String,
    /// Who holds the lease while this step fetches.
    pub holder: String,
    pub dir: PathBuf,
    pub retry_pause: Duration,
    /// How long the lease on `key` is taken for.
    pub lease: Duration,
    /// How often a track another job is fetching is looked for in the cache.
    pub poll_interval: Duration,
}

impl TrackWork {
    async fn record(&self, update: TrackUpdate) -> Result<(), RunError> {
        self.store
            .update_track(&self.job_id, self.index, &update)
            .await?;
        Ok(())
    }

    pub fn done(meta: ObjectMeta, attempts: u32) -> TrackUpdate {
        TrackUpdate::done(meta.size, meta.crc32, attempts)
    }

    /// Cached: taken at once. Else fetched under the key's lease; while another job holds it,
    /// the cache is looked at every `poll_interval` until the track is there (it fetched it), or
    /// the lease is free (it failed, or died and the lease expired): then this job fetches it.
    pub async fn run(self) -> Result<TrackUpdate, RunError> {
        let object = cache_object(&self.key);
        let mut waiting = false;
        loop {
            if let Some(meta) = self.storage.head(&object).await? {
                tracing::info!(job = %self.job_id, track = self.index, "track from the cache");
                return Ok(Self::done(meta, 0));
            }
            let until = unix_now() + self.lease.as_secs();
            if self
                .store
                .take_lease(&self.key, &self.holder, until)
                .await?
            {
                // It may have been stored between the look and the lease.
                let result = match self.storage.head(&object).await {
                    Ok(Some(meta)) => Ok(Self::done(meta, 0)),
                    Ok(None) => self.fetch(&object).await,
                    Err(e) => Err(e.into()),
                };
                // A track now in the cache needs its lease no more: everyone looks in the cache
                // before the lease, and the lease runs out. A track that is not there is given
                // back at once, so a job waiting for it takes it over.
                let cached = matches!(&result, Ok(update) if update.state == TrackState::Done);
                if !cached {
                    if let Err(e) = self.store.release_lease(&self.key, &self.holder).await {
                        tracing::warn!(error = %e, "cannot release a track lease (it expires)");
                    }
                }
                return result;
            }
            if !waiting {
                waiting = true;
                tracing::info!(job = %self.job_id, track = self.index, "another job is fetching the track: waiting");
                self.record(TrackUpdate::downloading(0)).await?;
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn fetch(&self, object: &str) -> Result<TrackUpdate, RunError> {
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            self.record(TrackUpdate::downloading(attempts)).await?;
            let _ = tokio::fs::remove_dir_all(&self.dir).await;
            match self.fetcher.fetch(&self.url, &self.dir).await {
                Err(reason) if attempts == 1 && is_passing(&reason) => {
                    tracing::info!(job = %self.job_id, track = self.index, error = %reason, "retrying after a pause");
                    tokio::time::sleep(self.retry_pause).await;
                }
                other => break other,
            }
        };
        let update = match result {
            Ok(path) => match self.store_file(path, object).await {
                Ok(meta) => Self::done(meta, attempts),
                Err(StoreFileError::Read(e)) => {
                    tracing::warn!(job = %self.job_id, track = self.index, error = %e, "cannot read the fetched file");
                    TrackUpdate::failed(crate::pipeline::UNREADABLE, attempts)
                }
                Err(StoreFileError::Storage(e)) => {
                    let _ = tokio::fs::remove_dir_all(&self.dir).await;
                    return Err(e.into());
                }
            },
            Err(reason) => TrackUpdate::failed(reason.to_string(), attempts),
        };
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "could not remove a track's temp dir");
            }
        }
        Ok(update)
    }

    /// Into the cache, whole or not at all (`put_file`).
    async fn store_file(&self, path: PathBuf, object: &str) -> Result<ObjectMeta, StoreFileError> {
        let checked = Checked::file(path.clone())
            .await
            .map_err(StoreFileError::Read)?;
        let meta = ObjectMeta {
            size: checked.size,
            crc32: checked.crc,
        };
        drop(checked);
        self.storage
            .put_file(object, &path, meta)
            .await
            .map_err(StoreFileError::Storage)?;
        Ok(meta)
    }
}

enum StoreFileError {
    Read(std::io::Error),
    Storage(StorageError),
}
