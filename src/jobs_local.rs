//! `xomcloud serve`'s embedded jobs: records in SQLite (`$XOMCLOUD_DATA_DIR/jobs.db`) and an
//! in-process queue whose steps (start, track, assemble: `jobs::runner`) run as tasks on this
//! process's runtime, the steps that reach SoundCloud (a job's resolution, a track's fetch)
//! `DOWNLOAD_CONCURRENCY` at a time across all jobs, in the order they were queued. Queued and
//! interrupted jobs are started again at start-up; their settled tracks are skipped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use xomcloud_common::config::Settings;
use xomcloud_common::storage::Storage;
use xomcloud_download_tracks::jobs::cache::CACHE_PREFIX;
use xomcloud_download_tracks::jobs::{JobRunner, JobsApi};
use xomcloud_download_tracks::service::DownloadService;
use xomcloud_download_tracks::wiring;
use xomcloud_jobs::queue::{JobMessage, JobQueue, LocalQueue, Step};
use xomcloud_jobs::store::{JobStore, SqliteStore};

pub async fn start(
    settings: &Settings,
    storage: Arc<dyn Storage>,
    download: Arc<DownloadService>,
) -> Result<JobsApi, String> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", settings.data_dir.display()))?;
    let path = settings.data_dir.join("jobs.db");
    let sqlite = Arc::new(
        SqliteStore::open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_active_limit(settings.max_active_jobs_per_caller),
    );
    let unfinished = sqlite.unfinished().await.map_err(|e| e.to_string())?;
    // Records live JOB_TTL_HOURS, as DynamoDB's TTL does it in AWS; on disk, cached tracks live
    // TRACK_CACHE_DAYS, as the bucket's lifecycle rule does it (in S3 mode that rule applies).
    let sweeper = sqlite.clone();
    let cache_dir = settings
        .bucket
        .is_none()
        .then(|| settings.data_dir.join(CACHE_PREFIX));
    let cache_age = settings.track_cache;
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            match sweeper
                .delete_expired(xomcloud_common::storage::unix_now())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "expired job records removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove expired job records"),
            }
            if let Some(dir) = cache_dir.clone() {
                match tokio::task::spawn_blocking(move || sweep_cache(&dir, cache_age)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(files = n, "expired cached tracks removed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep the track cache"),
                    Err(e) => tracing::warn!(error = %e, "the track cache sweep failed"),
                }
            }
        }
    });
    let store: Arc<dyn JobStore> = sqlite;
    let (queue, mut receiver) = LocalQueue::new();
    let queue: Arc<dyn JobQueue> = Arc::new(queue);
    let runner = Arc::new(wiring::runner(settings, store.clone(), storage.clone()));
    if std::env::var_os("JOB_WORKERS").is_some() {
        tracing::warn!(
            "JOB_WORKERS is no longer read: tracks of all jobs run DOWNLOAD_CONCURRENCY at a time"
        );
    }
    // Two lanes: assembly runs at once; the steps that reach SoundCloud pass one gate that hands
    // out the slots in the order the steps were queued (a task spawned first is not polled first,
    // so each task taking its own permit would let a later track overtake an earlier one).
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let (gated, mut gate) = tokio::sync::mpsc::unbounded_channel::<JobMessage>();
    let steps = queue.clone();
    let limits = download.limits.clone();
    let run = move |message: JobMessage, slot: Option<OwnedSemaphorePermit>| {
        tokio::spawn(run_step(
            message,
            runner.clone(),
            download.clone(),
            steps.clone(),
            slot,
        ));
    };
    let run_gated = run.clone();
    tokio::spawn(async move {
        while let Some(message) = gate.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            run_gated(message, Some(slot));
        }
    });
    tokio::spawn(async move {
        while let Some(message) = receiver.recv().await {
            match message.step {
                Step::Start | Step::Track(_) => {
                    if gated.send(message).is_err() {
                        return;
                    }
                }
                Step::Assemble => run(message, None),
            }
        }
    });
    if !unfinished.is_empty() {
        tracing::info!(jobs = unfinished.len(), "resuming unfinished jobs");
    }
    for job_id in unfinished {
        queue
            .send(&JobMessage::start(job_id))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(wiring::jobs_api(settings, store, queue, storage, limits))
}

/// One step, then the steps it asks for on the queue; `_slot` (a step that reaches SoundCloud
/// holds one) is given back when the step ends. A step that fails (the data dir unwritable, say)
/// fails its job.
async fn run_step(
    message: JobMessage,
    runner: Arc<JobRunner>,
    download: Arc<DownloadService>,
    queue: Arc<dyn JobQueue>,
    _slot: Option<OwnedSemaphorePermit>,
) {
    let fetcher = download.fetcher().await;
    let lookup = download.lookup().await;
    let job_id = &message.job_id;
    match runner.step(&message, fetcher, &lookup, None).await {
        Ok(next) => {
            if let Err(e) = queue.send_all(&next).await {
                tracing::error!(job = %job_id, error = %e, "cannot queue the next steps");
            }
        }
        Err(e) => {
            tracing::error!(job = %job_id, step = ?message.step, error = %e, "job step failed");
            let reason = "The job failed on the server; please try again";
            if let Err(e) = runner.fail(job_id, reason).await {
                tracing::error!(job = %job_id, error = %e, "cannot mark the job failed");
            }
        }
    }
}

/// Removes the files of the cache directory (tracks, their metadata, a crashed write's leftovers)
/// last written more than `max_age` ago; how many. No directory yet is nothing to do.
pub fn sweep_cache(dir: &std::path::Path, max_age: std::time::Duration) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if meta.is_file() && age > max_age {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_only_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let tracks = dir.path().join(CACHE_PREFIX);
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(sweep_cache(&tracks, day).unwrap(), 0, "no directory yet");
        std::fs::create_dir_all(&tracks).unwrap();
        let old = std::time::SystemTime::now() - 2 * day;
        for name in ["old.mp3", ".old.mp3.meta", "new.mp3", ".new.mp3.meta"] {
            let file = std::fs::File::create(tracks.join(name)).unwrap();
            if name.contains("old") {
                file.set_modified(old).unwrap();
            }
        }
        assert_eq!(sweep_cache(&tracks, day).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&tracks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".new.mp3.meta", "new.mp3"]);
    }
}
