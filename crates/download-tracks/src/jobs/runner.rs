//! Runs a download job as small steps, each one queue message (`xomcloud_jobs::queue`):
//!
//! - **start**: claims the job, resolves its links (a set becomes its tracks, a bare link gets
//!   its title and artist: `resolve.rs`), settles the tracks the shared cache already holds and
//!   asks for one track step per other unsettled track (for assembly when none is left);
//! - **track**: settles one track (`track.rs`: from the shared cache, or fetched into it) and
//!   counts it; the step that settles the last track asks for the assemble step;
//! - **assemble**: streams the cached tracks in request order into the STORED zip and marks the
//!   job done (or failed when no track was fetched).
//!
//! Every step is safe to run again (a redelivered message, a restart): a final job is left
//! alone, a settled track is not fetched or counted again, and of two assemblies only the one
//! that marks the job done keeps its zip.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use xomcloud_common::storage::{ObjectMeta, PartWriter, Storage, StorageError, MIN_PART_SIZE};
use xomcloud_jobs::model::{Job, JobStatus, Outcome, TrackSpec, TrackState, TrackUpdate};
use xomcloud_jobs::queue::{JobMessage, Step};
use xomcloud_jobs::store::{JobStore, Settled, StoreError};

use crate::jobs::cache::{cache_object, soundcloud_key, track_key};
use crate::jobs::track::TrackWork;
use crate::naming::assign_names;
use crate::pipeline::object_key;
use crate::resolve::{resolve_keyed, Lookup};
use crate::scdl::TrackFetcher;
use crate::validate::Track;
use crate::zip_stream::ZipStream;

/// Where a job kept its finished tracks before the shared cache (what a job of an older build
/// left there is removed with the job).
pub fn track_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// A track step's temp dir, named after the job and the track: a step after a crash removes
/// what the crashed one left, and every step removes its own when it ends.
pub(crate) struct StepTemp(PathBuf);

impl StepTemp {
    fn create(path: PathBuf) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StepTemp {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(error = %e, "could not remove a track's temp dir");
        }
    }
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

/// Cache lookups (and the settling of cached tracks) a start step has in flight at once.
const LOOKUPS_AT_ONCE: usize = 16;

/// The per-track error of a track whose message ended in the dead-letter queue.
pub const TRACK_DEAD_LETTER_ERROR: &str =
    "This track could not be downloaded: its worker failed repeatedly";

pub struct JobRunner {
    pub store: Arc<dyn JobStore>,
    pub storage: Arc<dyn Storage>,
    /// Zip parts in flight at once while assembling.
    pub concurrency: usize,
    /// Each fetch's own limit: a step does not start a track it could not finish.
    pub track_timeout: Duration,
    pub retry_pause: Duration,
    /// How often a running job's status is read, to see a cancellation.
    pub poll_interval: Duration,
    pub temp_root: PathBuf,
    pub part_size: usize,
    /// `MAX_JOB_TRACKS`: a job whose sets expand past it fails.
    pub max_tracks: usize,
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

    /// Runs one step; the messages to send next (none, the track steps, the assemble step, or
    /// this track step again when `deadline` leaves too little time for it).
    pub async fn step(
        &self,
        message: &JobMessage,
        fetcher: Arc<dyn TrackFetcher>,
        lookup: &dyn Lookup,
        deadline: Option<Instant>,
    ) -> Result<Vec<JobMessage>, RunError> {
        let id = &message.job_id;
        match message.step {
            Step::Start => self.start(id, lookup).await,
            Step::Track(index) => self.track(id, index, fetcher, deadline).await,
            Step::Assemble => {
                let status = self.assemble(id).await?;
                tracing::info!(job = %id, status = ?status, "assembly finished");
                Ok(Vec::new())
            }
        }
    }

    /// Claims the job and resolves its links; settles the unsettled tracks that are in the
    /// cache; one track step per other unsettled track, and the assemble step when none is
    /// left (every track cached, or a start repeated after the last track settled).
    pub async fn start(
        &self,
        job_id: &str,
        lookup: &dyn Lookup,
    ) -> Result<Vec<JobMessage>, RunError> {
        let Some(job) = self.store.get(job_id).await? else {
            tracing::warn!(job = job_id, "no such job");
            return Ok(Vec::new());
        };
        if job.status.is_final() {
            tracing::info!(job = job_id, status = job.status.as_str(), "already final");
            return Ok(Vec::new());
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
            return Ok(Vec::new());
        }
        let Some(job) = self.resolve_links(job, lookup).await? else {
            return Ok(Vec::new());
        };
        let unsettled: Vec<usize> = job
            .tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.state.is_settled())
            .map(|(i, _)| i)
            .collect();
        if unsettled.is_empty() {
            return Ok(vec![JobMessage::assemble(job_id)]);
        }
        // Tracks already in the shared cache are settled here, without a message of their own:
        // a job of cached tracks sends none and runs no scdl.
        let objects: Vec<(usize, String)> = unsettled
            .iter()
            .map(|&i| (i, cache_object(&track_key(&job.tracks[i].spec))))
            .collect();
        let storage = &self.storage;
        let heads: Vec<(usize, Option<ObjectMeta>)> = stream::iter(objects)
            .map(|(i, object)| async move { Ok::<_, RunError>((i, storage.head(&object).await?)) })
            .buffered(LOOKUPS_AT_ONCE)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        let mut cached = Vec::new();
        for (i, head) in heads {
            match head {
                Some(meta) => cached.push((i, meta)),
                None => next.push(JobMessage::track(job_id, i)),
            }
        }
        let store = &self.store;
        let cached_count = cached.len();
        let settled: Vec<Settled> = stream::iter(cached)
            .map(|(i, meta)| async move {
                store
                    .settle_track(job_id, i, &TrackWork::done(meta, 0))
                    .await
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .try_collect()
            .await?;
        tracing::info!(
            job = job_id,
            cached = cached_count,
            to_fetch = next.len(),
            "job started"
        );
        for settled in &settled {
            next.extend(self.after_settling(job_id, settled));
        }
        next.dedup();
        Ok(next)
    }

    /// The job with its links resolved (stored), or None when it ended instead: failed with
    /// the reason in plain words, or cancelled meanwhile. A job whose entries are all complete
    /// tracks (also a resolved job started again) starts no process.
    async fn resolve_links(&self, job: Job, lookup: &dyn Lookup) -> Result<Option<Job>, RunError> {
        let tracks: Vec<Track> = job.tracks.iter().map(|t| Track::from(&t.spec)).collect();
        if !tracks.iter().any(Track::needs_resolution) {
            return Ok(Some(job));
        }
        let resolved = tokio::select! {
            resolved = resolve_keyed(tracks, self.max_tracks, lookup) => resolved,
            () = self.cancelled(&job.id) => {
                self.cancel_cleanup(&job.id).await?;
                return Ok(None);
            }
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
                return Ok(None);
            }
        };
        tracing::info!(job = %job.id, from = job.tracks.len(), tracks = specs.len(), "links resolved");
        if !self.store.replace_tracks(&job.id, &specs).await? {
            return Ok(None);
        }
        Ok(self.store.get(&job.id).await?)
    }

    /// Settles track `index` of a running job and counts it; the assemble step when this
    /// settled the last track. A track settled already is only counted (once: a worker may
    /// have died between settling and counting); when every track is then settled, the
    /// assemble step is asked for again, in case the worker that counted the last one died
    /// before asking (a second assembly keeps nothing).
    pub async fn track(
        &self,
        job_id: &str,
        index: usize,
        fetcher: Arc<dyn TrackFetcher>,
        deadline: Option<Instant>,
    ) -> Result<Vec<JobMessage>, RunError> {
        let Some((status, record)) = self.store.track(job_id, index).await? else {
            tracing::warn!(job = job_id, track = index, "no such job or track");
            return Ok(Vec::new());
        };
        if status != JobStatus::Running {
            // Cancelled, failed or done meanwhile (or a stray message for a queued job).
            tracing::info!(
                job = job_id,
                track = index,
                status = status.as_str(),
                "track step skipped"
            );
            return Ok(Vec::new());
        }
        let settled = if record.state.is_settled() {
            self.store
                .settle_track(job_id, index, &record.update())
                .await?
        } else {
            // A track started now must be able to finish, retry included, with time to spare.
            let needed = self.track_timeout * 3 + self.retry_pause;
            if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < needed) {
                tracing::info!(
                    job = job_id,
                    track = index,
                    "handing the track back: too little time left"
                );
                return Ok(vec![JobMessage::track(job_id, index)]);
            }
            let Some(update) = self
                .fetch_track(job_id, index, &record.spec, fetcher)
                .await?
            else {
                return Ok(Vec::new());
            };
            tracing::info!(job = job_id, track = index, state = ?update.state, "track settled");
            self.store.settle_track(job_id, index, &update).await?
        };
        Ok(self.after_settling(job_id, &settled))
    }

    fn after_settling(&self, job_id: &str, settled: &Settled) -> Vec<JobMessage> {
        let assemble = settled.was_last() || (!settled.counted && settled.all());
        if assemble && settled.status == JobStatus::Running {
            vec![JobMessage::assemble(job_id)]
        } else {
            Vec::new()
        }
    }

    /// The track's settled state, fetched (or taken from the cache) in its own temp dir; None
    /// when the job was cancelled meanwhile (the process group killed, the lease given back).
    async fn fetch_track(
        &self,
        job_id: &str,
        index: usize,
        spec: &TrackSpec,
        fetcher: Arc<dyn TrackFetcher>,
    ) -> Result<Option<TrackUpdate>, RunError> {
        let temp = StepTemp::create(
            self.temp_root
                .join(format!("xomcloud-job-{job_id}-{index}")),
        )
        .map_err(|e| RunError::Other(format!("temp dir: {e}")))?;
        let work = TrackWork {
            store: self.store.clone(),
            storage: self.storage.clone(),
            fetcher,
            job_id: job_id.to_owned(),
            index,
            key: track_key(spec),
            url: spec.url.clone(),
            // The holder is the track, not the step: the step run again after a crash (serve
            // restarted, a message redelivered) takes its own lease over at once.
            holder: format!("{job_id}/{index}"),
            dir: temp.path().join("fetch"),
            retry_pause: self.retry_pause,
            // The fetch, its retry and the store, with room to spare.
            lease: self.track_timeout * 2 + self.retry_pause + Duration::from_secs(60),
            poll_interval: self.poll_interval,
        };
        let (key, holder) = (work.key.clone(), work.holder.clone());
        let update = tokio::select! {
            update = work.run() => Some(update?),
            () = self.cancelled(job_id) => None,
        };
        if update.is_none() {
            // The fetch was dropped (its process group killed): give its lease back at once, so
            // another job waiting for the track takes it over now rather than when it expires.
            tracing::info!(job = job_id, track = index, "cancelled");
            if let Err(e) = self.store.release_lease(&key, &holder).await {
                tracing::warn!(error = %e, "cannot release a track lease (it expires)");
            }
        }
        drop(temp);
        Ok(update)
    }

    /// Settles a track whose message ended in the dead-letter queue as failed; the assemble
    /// step when it was the last.
    pub async fn bury_track(
        &self,
        job_id: &str,
        index: usize,
    ) -> Result<Vec<JobMessage>, RunError> {
        let update = TrackUpdate::failed(TRACK_DEAD_LETTER_ERROR, 0);
        match self.store.settle_track(job_id, index, &update).await {
            Ok(settled) => Ok(self.after_settling(job_id, &settled)),
            // The job expired or never had that track: nothing to settle.
            Err(e) if self.store.track(job_id, index).await?.is_none() => {
                tracing::warn!(job = job_id, track = index, error = %e, "dead-lettered track of no job");
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
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

    async fn cancel_cleanup(&self, job_id: &str) -> Result<Option<JobStatus>, RunError> {
        tracing::info!(job = job_id, "cancelled");
        self.storage.delete_prefix(&track_prefix(job_id)).await?;
        Ok(Some(JobStatus::Cancelled))
    }

    /// Every track is settled: the zip of the cached ones in request order, or `failed` when
    /// none was fetched. A job that is not running (done by an earlier assembly, cancelled) is
    /// left alone, and so is one with unsettled tracks (the step that settles the last one asks
    /// for assembly again). The job's status afterwards.
    pub async fn assemble(&self, job_id: &str) -> Result<Option<JobStatus>, RunError> {
        let Some(job) = self.store.get(job_id).await? else {
            return Ok(None);
        };
        if job.status != JobStatus::Running {
            tracing::info!(
                job = job_id,
                status = job.status.as_str(),
                "nothing to assemble"
            );
            return Ok(Some(job.status));
        }
        let unsettled = job.tracks.iter().filter(|t| !t.state.is_settled()).count();
        if unsettled > 0 {
            tracing::warn!(
                job = job_id,
                unsettled,
                "assembly asked for too early: left"
            );
            return Ok(Some(job.status));
        }
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
            return Ok(self.store.status(job_id).await?);
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
            zip_key: Some(key.clone()),
        };
        let done = self
            .store
            .transition(job_id, &[JobStatus::Running], JobStatus::Done, &outcome)
            .await?;
        if !done {
            // Cancelled meanwhile, or another assembly finished first: this zip is no one's.
            let dir = key.rsplit_once('/').map_or(key.as_str(), |(dir, _)| dir);
            self.storage.delete_prefix(&format!("{dir}/")).await?;
            return Ok(self.store.status(job_id).await?);
        }
        self.storage.delete_prefix(&track_prefix(job_id)).await?;
        tracing::info!(
            job = job_id,
            done = job.done_count(),
            failed = job.failed_count(),
            "job finished"
        );
        Ok(Some(JobStatus::Done))
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
