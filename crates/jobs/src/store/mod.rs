//! The `JobStore` port: where jobs live (DynamoDB on AWS, SQLite for `xomcloud serve`).

use async_trait::async_trait;

use crate::model::{Job, JobStatus, Outcome, TrackRecord, TrackSpec, TrackUpdate};

pub mod dynamodb;
pub mod sqlite;

pub use dynamodb::DynamoStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
#[error("job store: {0}")]
pub struct StoreError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    /// The job id that the idempotency key already names.
    Existing(String),
    /// Nothing stored: the job's caller already has the store's limit of active (queued or
    /// running) jobs.
    TooManyActive,
}

/// What `settle_track` found: whether this call counted the track, and the job's count of
/// settled tracks, its total and its status after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub counted: bool,
    pub settled: usize,
    pub total: usize,
    pub status: JobStatus,
}

impl Settled {
    /// This call settled the job's last track: its caller, and no one else, sends the assemble
    /// step.
    pub fn was_last(&self) -> bool {
        self.counted && self.settled == self.total
    }

    /// Every track is settled (whoever counted the last one).
    pub fn all(&self) -> bool {
        self.settled >= self.total
    }
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job. With `idempotency_key`: when (job.owner, key) already names a job, stores
    /// nothing and returns `Existing(id)` (a claim with one conditional write; a racing second
    /// create also gets Existing). A key whose job has expired is free again.
    ///
    /// With an active-jobs limit (`with_active_limit`) and `job.caller` set: when that caller
    /// already has the limit of queued or running jobs, stores nothing and returns
    /// `TooManyActive`. The check and the store are one conditional write, so concurrent
    /// creations cannot pass the limit together; the job stops counting when a `transition`
    /// makes it final (done, failed, cancelled), once, whoever wins that transition.
    async fn create(&self, job: &Job, idempotency_key: Option<&str>)
        -> Result<Created, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// The status alone (cheap; the runner polls it about once a second to see a cancellation).
    async fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError>;

    /// Conditional: sets `to` (+ outcome fields, updated_at = now) only when the current status is
    /// one of `from`; Ok(false) when it was not (or the job is gone). A `from` that `can_become`
    /// does not allow to reach `to` is an error.
    async fn transition(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        outcome: &Outcome,
    ) -> Result<bool, StoreError>;

    /// Replaces the job's tracks with `specs`, every one queued, and its total with their count
    /// (and updated_at): a job's first step, resolving its links. Only while the job is
    /// `running` (its runner has claimed it); Ok(false) when it is not (cancelled meanwhile, or
    /// gone) and nothing changed. A reader sees the old list or the new one, never a mix of
    /// counts.
    async fn replace_tracks(&self, id: &str, specs: &[TrackSpec]) -> Result<bool, StoreError>;

    /// The job's status and track `index` (a track step reads no other track); None when the
    /// job or the track is gone.
    async fn track(
        &self,
        id: &str,
        index: usize,
    ) -> Result<Option<(JobStatus, TrackRecord)>, StoreError>;

    /// Writes track `index`'s state (and the job's updated_at when the state settles the track:
    /// a progress write touches the track alone, so parallel track steps do not all write the
    /// job); every field of the update is written, so a `None` clears it. An unknown job or
    /// index is an error. A progress state (queued, downloading) never overwrites a settled
    /// track: that write does nothing.
    async fn update_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<(), StoreError>;

    /// Settles track `index` with `update` (done or failed; anything else is an error) unless it
    /// is settled already (then its record stays as it is), and counts it among the job's
    /// settled tracks exactly once, however often this is called for it (a redelivered
    /// message; a worker that died between the two). An unknown job or index is an error.
    async fn settle_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<Settled, StoreError>;

    /// Takes the lease on a shared track cache key for `holder` until `until` (unix seconds):
    /// one conditional write, true when it was free, expired, or already `holder`'s. Two jobs
    /// asking for the same uncached track so fetch it once; a holder that dies loses it when
    /// it expires.
    async fn take_lease(&self, key: &str, holder: &str, until: u64) -> Result<bool, StoreError>;

    /// Gives the lease back if `holder` still has it (else nothing happens).
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError>;
}

/// Refuses a transition the model forbids, so no adapter can persist one.
pub(crate) fn check_transition(from: &[JobStatus], to: JobStatus) -> Result<(), StoreError> {
    match from.iter().find(|f| !f.can_become(to)) {
        Some(bad) => Err(StoreError(format!("forbidden transition {bad} -> {to}"))),
        None => Ok(()),
    }
}

/// Refuses a `settle_track` with a state that does not settle a track.
pub(crate) fn check_settles(update: &TrackUpdate) -> Result<(), StoreError> {
    if update.state.is_settled() {
        Ok(())
    } else {
        Err(StoreError(format!(
            "{} does not settle a track",
            update.state.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_sources_are_refused() {
        use JobStatus::*;
        assert!(check_transition(&[Queued, Running], Cancelled).is_ok());
        assert!(check_transition(&[], Done).is_ok());
        let err = check_transition(&[Running, Done], Cancelled).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job store: forbidden transition done -> cancelled"
        );
        assert!(check_transition(&[Queued], Done).is_err());
    }
}
