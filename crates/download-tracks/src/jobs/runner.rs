//! Runs one download job: resolves its links first (a set becomes its tracks, a bare link gets its
//! title and artist: `resolve.rs`), then settles its unsettled tracks (`concurrency` at a time):
//! a track already in the shared cache (`cache.rs`) is taken as it is, another is fetched under a
//! lease on its cache key (or waited for, when another job holds the lease) and stored there with
//! its size and CRC-32. Every track's state is recorded as it changes; then the cached objects
//! are streamed in request order into the STORED zip and the job is marked done. Safe to run
//! again on the same job (a redelivered message, a restart): settled tracks are skipped and a
//! finished job is left alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use xomcloud_common::storage::{ObjectMeta, PartWriter, Storage, StorageError, MIN_PART_SIZE};
use xomcloud_jobs::model::{unix_now, Job, JobStatus, Outcome, TrackSpec, TrackState, TrackUpdate};
use xomcloud_jobs::store::{JobStore, StoreError};

use crate::jobs::cache::{cache_object, soundcloud_key, track_key};
use crate::naming::assign_names;
use crate::pipeline::object_key;
use crate::resolve::{resolve_keyed, Lookup};
use crate::scdl::{FetchError, TrackFetcher};
use crate::validate::Track;
use crate::zip_stream::{Checked, ZipStream};

/// Where a job kept its finished tracks before the shared cache (what a job of an older build
/// left there is removed with the job).
pub fn track_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// A run's temp dir, named after the job: a run after a crash removes what the crashed one
/// left, and every run removes its own when it ends.
struct JobTemp(PathBuf);

impl JobTemp {
    fn create(path: PathBuf) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for JobTemp {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(error = %e, "could not remove a job's temp dir");
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The job is final (done, failed, cancelled), or was already, or is gone.
    Settled(Option<JobStatus>),
    /// Time ran short: tracks are left; run the job again (the next run skips stored tracks).
    HandBack,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Other(String),
}

pub struct JobRunner {
    pub store: Arc<dyn JobStore>,
    pub storage: Arc<dyn Storage>,
    pub concurrency: usize,
    /// Each fetch's own limit: a run does not start a track it could not finish.
    pub track_timeout: Duration,
    pub retry_pause: Duration,
    /// How often a running job's status is read, to see a cancellation.
    pub poll_interval: Duration,
    pub temp_root: PathBuf,
    pub part_size: usize,
    /// `MAX_JOB_TRACKS`: a job whose sets expand past it fails.
    pub max_tracks: usize,
}

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

impl JobRunner {
    pub fn new(
        store: Arc<dyn JobStore>,
        storage: Arc<dyn Storage>,
        concurrency: usize,
        track_timeout: Duration,
        retry_pause: Duration,
    ) -> Self {
        Self {
            store,
            storage,
            concurrency: concurrency.max(1),
            track_timeout,
            retry_pause,
            poll_interval: Duration::from_secs(1),
            temp_root: std::env::temp_dir(),
            part_size: MIN_PART_SIZE,
            max_tracks: 200,
        }
    }

    /// Runs `job_id` until it is final, or until `deadline` leaves no room for one more track.
    pub async fn run(
        &self,
        job_id: &str,
        fetcher: Arc<dyn TrackFetcher>,
        lookup: &dyn Lookup,
        deadline: Option<Instant>,
    ) -> Result<RunOutcome, RunError> {
        let Some(job) = self.store.get(job_id).await? else {
            tracing::warn!(job = job_id, "no such job");
            return Ok(RunOutcome::Settled(None));
        };
        if job.status.is_final() {
            tracing::info!(job = job_id, status = job.status.as_str(), "already final");
            return Ok(RunOutcome::Settled(Some(job.status)));
        }
        let claimed = self
            .store
            .transition(
                job_id,
                &[JobStatus::Queued, JobStatus::Running],
                JobStatus::Running,
                &Outcome::default(),
            )
            .await?;
        if !claimed {
            return Ok(RunOutcome::Settled(self.store.status(job_id).await?));
        }
        let job = match self.resolve_links(job, lookup).await? {
            Ok(job) => job,
            Err(ended) => return Ok(ended),
        };
        let temp = JobTemp::create(self.temp_root.join(format!("xomcloud-job-{job_id}")))
            .map_err(|e| RunError::Other(format!("temp dir: {e}")))?;
        let mut tasks = JoinSet::new();
        let leases = Leases::default();
        let fetched = tokio::select! {
            result = self.fetch_all(&job, fetcher, temp.path().to_owned(), deadline, &leases, &mut tasks) => Some(result),
            () = self.cancelled(job_id) => None,
        };
        // Whatever still runs is stopped and reaped (its process group killed) before the temp
        // dir goes; the cache leases its tracks held are given back, so another job waiting for
        // one of them takes it over at once rather than when the lease runs out.
        tasks.shutdown().await;
        drop(temp);
        self.release_all(&leases).await;
        match fetched {
            None => return self.cancel_cleanup(job_id).await,
            Some(Err(e)) => return Err(e),
            Some(Ok(false)) => {
                tracing::info!(job = job_id, "handing the job back: too little time left");
                return Ok(RunOutcome::HandBack);
            }
            Some(Ok(true)) => {}
        }
        self.assemble(job_id).await
    }

    /// The job with its links resolved (stored), or how it ended instead: failed with the
    /// reason in plain words, or cancelled meanwhile. A job whose entries are all complete
    /// tracks (also a resolved job run again) starts no process.
    async fn resolve_links(
        &self,
        job: Job,
        lookup: &dyn Lookup,
    ) -> Result<Result<Job, RunOutcome>, RunError> {
        let tracks: Vec<Track> = job.tracks.iter().map(|t| Track::from(&t.spec)).collect();
        if !tracks.iter().any(Track::needs_resolution) {
            return Ok(Ok(job));
        }
        let resolved = tokio::select! {
            resolved = resolve_keyed(tracks, self.max_tracks, lookup) => resolved,
            () = self.cancelled(&job.id) => return self.cancel_cleanup(&job.id).await.map(Err),
        };
        let specs: Vec<TrackSpec> = match resolved {
            // A track whose metadata SoundCloud gave is cached under SoundCloud's id of it.
            Ok(tracks) => tracks
                .into_iter()
                .map(|(track, id)| TrackSpec {
                    cache_key: id.as_deref().and_then(soundcloud_key),
                    ..TrackSpec::from(track)
                })
                .collect(),
            Err(reason) => {
                tracing::info!(job = %job.id, reason = %reason, "the job's links cannot be resolved");
                self.fail(&job.id, &reason).await?;
                return Ok(Err(RunOutcome::Settled(self.store.status(&job.id).await?)));
            }
        };
        tracing::info!(job = %job.id, from = job.tracks.len(), tracks = specs.len(), "links resolved");
        if !self.store.replace_tracks(&job.id, &specs).await? {
            return Ok(Err(RunOutcome::Settled(self.store.status(&job.id).await?)));
        }
        match self.store.get(&job.id).await? {
            Some(job) => Ok(Ok(job)),
            None => Ok(Err(RunOutcome::Settled(None))),
        }
    }

    /// Gives up on an unfinished job: `failed` with `reason`, its stored tracks removed. False
    /// when it had already ended.
    pub async fn fail(&self, job_id: &str, reason: &str) -> Result<bool, RunError> {
        let outcome = Outcome {
            error: Some(reason.to_owned()),
            zip_key: None,
        };
        let from = [JobStatus::Queued, JobStatus::Running];
        let marked = self
            .store
            .transition(job_id, &from, JobStatus::Failed, &outcome)
            .await?;
        self.storage.delete_prefix(&track_prefix(job_id)).await?;
        Ok(marked)
    }

    /// Resolves once the job's status reads `cancelled` (or the job is gone).
    async fn cancelled(&self, job_id: &str) {
        loop {
            tokio::time::sleep(self.poll_interval).await;
            match self.store.status(job_id).await {
                Ok(Some(JobStatus::Cancelled) | None) => return,
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(job = job_id, error = %e, "cannot read the job's status"),
            }
        }
    }

    async fn cancel_cleanup(&self, job_id: &str) -> Result<RunOutcome, RunError> {
        tracing::info!(job = job_id, "cancelled");
        self.storage.delete_prefix(&track_prefix(job_id)).await?;
        Ok(RunOutcome::Settled(Some(JobStatus::Cancelled)))
    }

    /// Fetches and stores every unsettled track; false when the deadline stopped it early.
    async fn fetch_all(
        &self,
        job: &Job,
        fetcher: Arc<dyn TrackFetcher>,
        temp: PathBuf,
        deadline: Option<Instant>,
        leases: &Leases,
        tasks: &mut JoinSet<Result<(), RunError>>,
    ) -> Result<bool, RunError> {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut complete = true;
        let pending = job
            .tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.state.is_settled())
            .map(|(i, _)| i);
        for index in pending {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            // A track started now must be able to finish, retry included, and leave about one
            // more track timeout for the zip, before the deadline.
            let needed = self.track_timeout * 3 + self.retry_pause;
            if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < needed) {
                complete = false;
                break;
            }
            let spec = &job.tracks[index].spec;
            let work = TrackWork {
                store: self.store.clone(),
                storage: self.storage.clone(),
                fetcher: fetcher.clone(),
                job_id: job.id.clone(),
                index,
                key: track_key(spec),
                url: spec.url.clone(),
                dir: temp.join(index.to_string()),
                retry_pause: self.retry_pause,
                // The fetch, its retry and the store, with room to spare.
                lease: self.track_timeout * 2 + self.retry_pause + Duration::from_secs(60),
                poll_interval: self.poll_interval,
                leases: leases.clone(),
            };
            tasks.spawn(async move {
                let result = work.run().await;
                drop(permit);
                result
            });
            // Surface a storage failure without waiting for every track.
            while let Some(joined) = tasks.try_join_next() {
                joined.map_err(|e| RunError::Other(format!("track task: {e}")))??;
            }
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| RunError::Other(format!("track task: {e}")))??;
        }
        Ok(complete)
    }

    /// Gives back the leases of tracks that were stopped while holding one.
    async fn release_all(&self, leases: &Leases) {
        let held: Vec<(String, String)> = leases.0.lock().expect("leases lock").drain().collect();
        for (key, holder) in held {
            if let Err(e) = self.store.release_lease(&key, &holder).await {
                tracing::warn!(error = %e, "cannot release a track lease (it expires)");
            }
        }
    }

    /// Every track is settled: the zip of the stored ones in request order, or `failed` when
    /// none was fetched.
    async fn assemble(&self, job_id: &str) -> Result<RunOutcome, RunError> {
        let job = self
            .store
            .get(job_id)
            .await?
            .ok_or_else(|| RunError::Other("the job vanished".into()))?;
        let total = job.tracks.len();
        if job.done_count() == 0 {
            let outcome = Outcome {
                error: Some(format!("All {total} downloads failed")),
                zip_key: None,
            };
            self.store
                .transition(job_id, &[JobStatus::Running], JobStatus::Failed, &outcome)
                .await?;
            self.storage.delete_prefix(&track_prefix(job_id)).await?;
            return Ok(RunOutcome::Settled(Some(JobStatus::Failed)));
        }
        let tracks: Vec<Track> = job.tracks.iter().map(|t| Track::from(&t.spec)).collect();
        let names = assign_names(&tracks);
        let owner = crate::validate::key_owner(Some(&job.owner), None);
        let key = object_key(&owner, time::OffsetDateTime::now_utc());
        let upload = self.storage.create_upload(&key).await?;
        let mut sink = PartWriter::new(upload, self.part_size, self.concurrency);
        let written = tokio::select! {
            result = self.write_zip(&job, &names, &mut sink) => Some(result),
            () = self.cancelled(job_id) => None,
        };
        if !matches!(written, Some(Ok(()))) {
            if let Err(abort) = sink.abort().await {
                tracing::warn!(error = %abort, "aborting the upload failed");
            }
            return match written {
                Some(Err(e)) => Err(e),
                _ => self.cancel_cleanup(job_id).await,
            };
        }
        sink.finish().await?;
        let outcome = Outcome {
            error: None,
            zip_key: Some(key),
        };
        let done = self
            .store
            .transition(job_id, &[JobStatus::Running], JobStatus::Done, &outcome)
            .await?;
        self.storage.delete_prefix(&track_prefix(job_id)).await?;
        tracing::info!(
            job = job_id,
            done = job.done_count(),
            failed = job.failed_count(),
            "job finished"
        );
        Ok(RunOutcome::Settled(Some(if done {
            JobStatus::Done
        } else {
            JobStatus::Cancelled
        })))
    }

    async fn write_zip(
        &self,
        job: &Job,
        names: &[String],
        sink: &mut PartWriter,
    ) -> Result<(), RunError> {
        let mut zip = ZipStream::default();
        for (index, track) in job.tracks.iter().enumerate() {
            if track.state != TrackState::Done {
                continue;
            }
            let (Some(size), Some(crc)) = (track.size, track.crc32) else {
                return Err(RunError::Other(format!(
                    "track {index} is done without size/CRC"
                )));
            };
            sink.write(&zip.begin_entry(&names[index], size, crc))
                .await?;
            let object = cache_object(&track_key(&track.spec));
            self.storage.copy_into(&object, sink, size).await?;
        }
        sink.write(&zip.finish()).await?;
        Ok(())
    }
}

/// The cache leases a run's tracks hold (key, holder), so a run that stops them gives them back.
#[derive(Clone, Default)]
struct Leases(Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>);

impl Leases {
    fn held(&self, key: &str, holder: &str, now: bool) {
        let mut held = self.0.lock().expect("leases lock");
        let entry = (key.to_owned(), holder.to_owned());
        if now {
            held.insert(entry);
        } else {
            held.remove(&entry);
        }
    }
}

/// One track of a job: from the cache, or fetched (one retry for a passing failure) under the
/// cache key's lease and stored in the cache; recorded.
struct TrackWork {
    store: Arc<dyn JobStore>,
    storage: Arc<dyn Storage>,
    fetcher: Arc<dyn TrackFetcher>,
    job_id: String,
    index: usize,
    url: String,
    /// The track's cache key (`cache.rs`): SoundCloud's id or its URL's, never the client's id.
    key: String,
    dir: PathBuf,
    retry_pause: Duration,
    /// How long the lease on `key` is taken for.
    lease: Duration,
    /// How often a track another job is fetching is looked for in the cache.
    poll_interval: Duration,
    leases: Leases,
}

impl TrackWork {
    async fn record(&self, update: TrackUpdate) -> Result<(), RunError> {
        self.store
            .update_track(&self.job_id, self.index, &update)
            .await?;
        Ok(())
    }

    fn done(meta: ObjectMeta, attempts: u32) -> TrackUpdate {
        TrackUpdate {
            state: TrackState::Done,
            error: None,
            size: Some(meta.size),
            crc32: Some(meta.crc32),
            attempts,
        }
    }

    /// Cached: taken at once. Else fetched under the key's lease; while another job holds it,
    /// the cache is looked at every `poll_interval` until the track is there (it fetched it), or
    /// the lease is free (it failed, or died and the lease expired): then this job fetches it.
    async fn run(self) -> Result<(), RunError> {
        let object = cache_object(&self.key);
        let holder = format!("{}/{}", self.job_id, self.index);
        let mut waiting = false;
        loop {
            if let Some(meta) = self.storage.head(&object).await? {
                tracing::info!(job = %self.job_id, track = self.index, "track from the cache");
                return self.record(Self::done(meta, 0)).await;
            }
            let until = unix_now() + self.lease.as_secs();
            if self.store.take_lease(&self.key, &holder, until).await? {
                self.leases.held(&self.key, &holder, true);
                // It may have been stored between the look and the lease.
                let result = match self.storage.head(&object).await {
                    Ok(Some(meta)) => self.record(Self::done(meta, 0)).await,
                    Ok(None) => self.fetch(&object).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = self.store.release_lease(&self.key, &holder).await {
                    tracing::warn!(error = %e, "cannot release a track lease (it expires)");
                }
                self.leases.held(&self.key, &holder, false);
                return result;
            }
            if !waiting {
                waiting = true;
                tracing::info!(job = %self.job_id, track = self.index, "another job is fetching the track: waiting");
                self.record(TrackUpdate {
                    state: TrackState::Downloading,
                    error: None,
                    size: None,
                    crc32: None,
                    attempts: 0,
                })
                .await?;
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn fetch(&self, object: &str) -> Result<(), RunError> {
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            self.record(TrackUpdate {
                state: TrackState::Downloading,
                error: None,
                size: None,
                crc32: None,
                attempts,
            })
            .await?;
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
                    TrackUpdate {
                        state: TrackState::Failed,
                        error: Some(crate::pipeline::UNREADABLE.into()),
                        size: None,
                        crc32: None,
                        attempts,
                    }
                }
                Err(StoreFileError::Storage(e)) => {
                    let _ = tokio::fs::remove_dir_all(&self.dir).await;
                    return Err(e.into());
                }
            },
            Err(reason) => TrackUpdate {
                state: TrackState::Failed,
                error: Some(reason.to_string()),
                size: None,
                crc32: None,
                attempts,
            },
        };
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "could not remove a track's temp dir");
            }
        }
        tracing::info!(job = %self.job_id, track = self.index, state = ?update.state, "track settled");
        self.record(update).await
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
