//! `JobStore` on one SQLite file, for `xomcloud serve`: a `jobs` table and a `tracks` table (one
//! row per track, so a track update rewrites one small row, not the whole job).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::{check_settles, check_transition, Created, JobStore, Settled, StoreError};
use crate::model::{
    unix_now, Job, JobStatus, Outcome, TrackRecord, TrackSpec, TrackState, TrackUpdate,
};

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE jobs (
    id         TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    error      TEXT,
    zip_key    TEXT,
    idem_key   TEXT,
    caller     TEXT
);
-- NULL keys are distinct in a UNIQUE index, so jobs without a key never collide.
CREATE UNIQUE INDEX jobs_owner_idem ON jobs (owner, idem_key);
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_expires ON jobs (expires_at);
CREATE INDEX jobs_caller_status ON jobs (caller, status);
CREATE TABLE tracks (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx      INTEGER NOT NULL,
    track_id TEXT NOT NULL,
    url      TEXT NOT NULL,
    title    TEXT NOT NULL,
    artist   TEXT NOT NULL,
    state    TEXT NOT NULL,
    error    TEXT,
    size     INTEGER,
    crc32    INTEGER,
    attempts INTEGER NOT NULL,
    cache_key TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
";

/// Version 1 → 2: the creating caller, counted against `MAX_ACTIVE_JOBS_PER_CALLER`.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE jobs ADD COLUMN caller TEXT;
CREATE INDEX jobs_caller_status ON jobs (caller, status);
";

/// Version 2 → 3: a track's key in the shared track cache, when resolution set it.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE tracks ADD COLUMN cache_key TEXT;
";

/// The shared track cache's leases (`JobStore::take_lease`); made when missing, whatever the
/// schema version, as it holds nothing that outlives a few minutes.
const LEASES: &str = "
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Jobs in SQLite. rusqlite is blocking, so every call runs on tokio's blocking pool, one at a
/// time through the mutex (SQLite has one writer anyway).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Queued or running jobs a caller may have at once; 0: no limit.
    active_limit: u32,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory when missing) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        // WAL lets a reader (GET /jobs) proceed while the runner writes.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("journal_mode"))?;
        Self::setup(conn)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(sql("open in memory"))?)
    }

    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        // Another process (a second `serve`, a CLI) may hold the write lock for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("foreign_keys"))?;
        // NORMAL is durable enough under WAL: a power cut may lose the last commits, never corrupt.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("synchronous"))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql("user_version"))?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA).map_err(sql("create schema"))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql("user_version"))?;
            }
            1 | 2 => {
                if version == 1 {
                    tx.execute_batch(MIGRATE_1_TO_2)
                        .map_err(sql("migrate schema"))?;
                }
                tx.execute_batch(MIGRATE_2_TO_3)
                    .map_err(sql("migrate schema"))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql("user_version"))?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(StoreError(format!(
                    "database schema version {other}, this build knows {SCHEMA_VERSION}"
                )))
            }
        }
        tx.execute_batch(LEASES).map_err(sql("create leases"))?;
        tx.commit().map_err(sql("commit schema"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            active_limit: 0,
        })
    }

    /// Refuses a job whose caller already has `limit` queued or running jobs (0: no limit).
    pub fn with_active_limit(mut self, limit: u32) -> Self {
        self.active_limit = limit;
        self
    }

    /// Ids of queued or running jobs, oldest first (to resume them after a restart).
    pub async fn unfinished(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE status IN (?1, ?2) ORDER BY created_at, rowid",
                )
                .map_err(sql("unfinished"))?;
            let rows = stmt
                .query_map(
                    params![JobStatus::Queued.as_str(), JobStatus::Running.as_str()],
                    |row| row.get::<_, String>(0),
                )
                .map_err(sql("unfinished"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(sql("unfinished"))
        })
        .await
    }

    /// Drops the jobs (and their tracks) whose `expires_at` is before `now`; returns how many.
    pub async fn delete_expired(&self, now: u64) -> Result<usize, StoreError> {
        let now = to_i64(now)?;
        self.with_conn(move |conn| {
            // Leases run out with their holders (a fetched track's is not given back).
            conn.execute("DELETE FROM leases WHERE expires_at < ?1", params![now])
                .map_err(sql("delete expired leases"))?;
            conn.execute("DELETE FROM jobs WHERE expires_at < ?1", params![now])
                .map_err(sql("delete expired"))
        })
        .await
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic in another call cannot leave a half-done write: it is in a transaction.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError(format!("sqlite task: {e}")))?
    }

    /// `f` in one write transaction (taken at once: `IMMEDIATE`), committed when it succeeds.
    async fn in_transaction<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin"))?;
            let value = f(&tx)?;
            tx.commit().map_err(sql("commit"))?;
            Ok(value)
        })
        .await
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create(
        &self,
        job: &Job,
        idempotency_key: Option<&str>,
    ) -> Result<Created, StoreError> {
        let job = job.clone();
        let key = idempotency_key.map(str::to_owned);
        let limit = self.active_limit;
        self.with_conn(move |conn| create(conn, &job, key.as_deref(), limit))
            .await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.with_conn(move |conn| get(conn, &id)).await
    }

    async fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let id = id.to_owned();
        self.with_conn(move |conn| {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM jobs WHERE id = ?1")
                .and_then(|mut stmt| stmt.query_row(params![id], |row| row.get(0)).optional())
                .map_err(sql("status"))?;
            status.map(|s| parse_status(&s)).transpose()
        })
        .await
    }

    async fn transition(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        check_transition(from, to)?;
        if from.is_empty() {
            return Ok(false);
        }
        let now = to_i64(unix_now())?;
        let mut values: Vec<Value> = vec![
            to.as_str().to_owned().into(),
            now.into(),
            outcome.error.clone().into(),
            outcome.zip_key.clone().into(),
            id.to_owned().into(),
        ];
        values.extend(from.iter().map(|s| Value::from(s.as_str().to_owned())));
        let placeholders = (6..6 + from.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let statement = format!(
            "UPDATE jobs SET status = ?1, updated_at = ?2, error = COALESCE(?3, error), \
             zip_key = COALESCE(?4, zip_key) WHERE id = ?5 AND status IN ({placeholders})"
        );
        self.with_conn(move |conn| {
            let changed = conn
                .execute(&statement, params_from_iter(values))
                .map_err(sql("transition"))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn replace_tracks(&self, id: &str, specs: &[TrackSpec]) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let specs = specs.to_vec();
        let now = to_i64(unix_now())?;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin"))?;
            // Only a running job: a cancelled one keeps what it had.
            let changed = tx
                .execute(
                    "UPDATE jobs SET updated_at = ?1 WHERE id = ?2 AND status = ?3",
                    params![now, id, JobStatus::Running.as_str()],
                )
                .map_err(sql("replace tracks"))?;
            if changed != 1 {
                return Ok(false);
            }
            tx.execute("DELETE FROM tracks WHERE job_id = ?1", params![id])
                .map_err(sql("replace tracks"))?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO tracks (job_id, idx, track_id, url, title, artist, state, \
                         attempts, cache_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)",
                    )
                    .map_err(sql("insert track"))?;
                for (index, spec) in specs.iter().enumerate() {
                    insert
                        .execute(params![
                            id,
                            to_i64(index as u64)?,
                            spec.id,
                            spec.url,
                            spec.title,
                            spec.artist,
                            TrackState::Queued.as_str(),
                            spec.cache_key
                        ])
                        .map_err(sql("insert track"))?;
                }
            }
            tx.commit().map_err(sql("commit"))?;
            Ok(true)
        })
        .await
    }

    async fn track(
        &self,
        id: &str,
        index: usize,
    ) -> Result<Option<(JobStatus, TrackRecord)>, StoreError> {
        let id = id.to_owned();
        let index = to_i64(index as u64)?;
        self.with_conn(move |conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT jobs.status, {TRACK_COLUMNS} FROM tracks JOIN jobs ON jobs.id = \
                     tracks.job_id WHERE tracks.job_id = ?1 AND tracks.idx = ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![id, index], |row| {
                        Ok((row.get::<_, String>(0)?, track_columns(row, 1)?))
                    })
                    .optional()
                })
                .map_err(sql("get track"))?;
            row.map(|(status, track)| Ok((parse_status(&status)?, track_record(track)?)))
                .transpose()
        })
        .await
    }

    async fn update_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let update = update.clone();
        self.in_transaction(move |tx| {
            write_track(tx, &id, index, &update, !update.state.is_settled()).map(drop)
        })
        .await
    }

    async fn settle_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<Settled, StoreError> {
        check_settles(update)?;
        let id = id.to_owned();
        let update = update.clone();
        // One transaction: the track changes and is counted together, or not at all.
        self.in_transaction(move |tx| {
            let counted = write_track(tx, &id, index, &update, true)?;
            let (status, settled, total) = tx
                .query_row(
                    "SELECT jobs.status, \
                     (SELECT COUNT(*) FROM tracks WHERE job_id = ?1 AND state IN (?2, ?3)), \
                     (SELECT COUNT(*) FROM tracks WHERE job_id = ?1) FROM jobs WHERE id = ?1",
                    params![id, TrackState::Done.as_str(), TrackState::Failed.as_str()],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(sql("count settled"))?;
            Ok(Settled {
                counted,
                settled: to_u64(settled)? as usize,
                total: to_u64(total)? as usize,
                status: parse_status(&status)?,
            })
        })
        .await
    }

    async fn take_lease(&self, key: &str, holder: &str, until: u64) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        let (until, now) = (to_i64(until)?, to_i64(unix_now())?);
        self.with_conn(move |conn| {
            let changed = conn
                .execute(
                    "INSERT INTO leases (key, holder, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET holder = ?2, expires_at = ?3 \
                     WHERE leases.expires_at <= ?4 OR leases.holder = ?2",
                    params![key, holder, until, now],
                )
                .map_err(sql("take lease"))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE key = ?1 AND holder = ?2",
                params![key, holder],
            )
            .map_err(sql("release lease"))?;
            Ok(())
        })
        .await
    }
}

fn create(
    conn: &mut Connection,
    job: &Job,
    key: Option<&str>,
    active_limit: u32,
) -> Result<Created, StoreError> {
    // IMMEDIATE takes the write lock first, so a racing create (this process or another) waits
    // here instead of both seeing the key free.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin"))?;
    let created_at = to_i64(job.created_at)?;
    if let Some(key) = key {
        let existing: Option<(String, i64)> = tx
            .query_row(
                "SELECT id, expires_at FROM jobs WHERE owner = ?1 AND idem_key = ?2",
                params![job.owner, key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql("idempotency lookup"))?;
        match existing {
            // An expired job no longer holds its key (as DynamoDB's TTL would have freed it).
            Some((old, expires_at)) if expires_at < created_at => {
                tx.execute(
                    "UPDATE jobs SET idem_key = NULL WHERE id = ?1",
                    params![old],
                )
                .map_err(sql("free idempotency key"))?;
            }
            Some((old, _)) => return Ok(Created::Existing(old)),
            None => {}
        }
    }
    // Counted inside the same write transaction as the insert: no racing create slips past.
    if let (Some(caller), 1..) = (&job.caller, active_limit) {
        let active: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE caller = ?1 AND status IN (?2, ?3) \
                 AND expires_at >= ?4",
                params![
                    caller,
                    JobStatus::Queued.as_str(),
                    JobStatus::Running.as_str(),
                    created_at
                ],
                |row| row.get(0),
            )
            .map_err(sql("count active jobs"))?;
        if active >= i64::from(active_limit) {
            return Ok(Created::TooManyActive);
        }
    }
    tx.execute(
        "INSERT INTO jobs (id, owner, status, created_at, updated_at, expires_at, error, zip_key, \
         idem_key, caller) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            job.id,
            job.owner,
            job.status.as_str(),
            created_at,
            to_i64(job.updated_at)?,
            to_i64(job.expires_at)?,
            job.error,
            job.zip_key,
            key,
            job.caller
        ],
    )
    .map_err(sql("insert job"))?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO tracks (job_id, idx, track_id, url, title, artist, state, error, \
                 size, crc32, attempts, cache_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(sql("insert track"))?;
        for (index, track) in job.tracks.iter().enumerate() {
            insert
                .execute(params![
                    job.id,
                    to_i64(index as u64)?,
                    track.spec.id,
                    track.spec.url,
                    track.spec.title,
                    track.spec.artist,
                    track.state.as_str(),
                    track.error,
                    track.size.map(to_i64).transpose()?,
                    track.crc32,
                    track.attempts,
                    track.spec.cache_key
                ])
                .map_err(sql("insert track"))?;
        }
    }
    tx.commit().map_err(sql("commit job"))?;
    Ok(Created::New)
}

fn get(conn: &mut Connection, id: &str) -> Result<Option<Job>, StoreError> {
    // One read transaction: the job row and its tracks come from the same snapshot.
    let tx = conn.transaction().map_err(sql("begin"))?;
    let row = tx
        .query_row(
            "SELECT owner, status, created_at, updated_at, expires_at, error, zip_key, caller \
             FROM jobs WHERE id = ?1",
            params![id],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, Option<String>>(7)?,
                ))
            },
        )
        .optional()
        .map_err(sql("get job"))?;
    let Some((owner, status, created_at, updated_at, expires_at, error, zip_key, caller)) = row
    else {
        return Ok(None);
    };
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {TRACK_COLUMNS} FROM tracks WHERE job_id = ?1 ORDER BY idx"
        ))
        .map_err(sql("get tracks"))?;
    let tracks = stmt
        .query_map(params![id], |row| track_columns(row, 0))
        .map_err(sql("get tracks"))?
        .map(|row| track_record(row.map_err(sql("get tracks"))?))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Job {
        id: id.to_owned(),
        owner,
        status: parse_status(&status)?,
        created_at: to_u64(created_at)?,
        updated_at: to_u64(updated_at)?,
        expires_at: to_u64(expires_at)?,
        error,
        zip_key,
        caller,
        tracks,
    }))
}

/// Writes a track's state (and the job's updated_at when it settles the track); with
/// `unless_settled`, only over a track not settled yet. Whether it wrote; an unknown job or
/// index is an error.
fn write_track(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    index: usize,
    update: &TrackUpdate,
    unless_settled: bool,
) -> Result<bool, StoreError> {
    let index = to_i64(index as u64)?;
    let size = update.size.map(to_i64).transpose()?;
    let guard = if unless_settled {
        " AND state NOT IN ('done', 'failed')"
    } else {
        ""
    };
    let changed = tx
        .execute(
            &format!(
                "UPDATE tracks SET state = ?1, error = ?2, size = ?3, crc32 = ?4, attempts = ?5 \
                 WHERE job_id = ?6 AND idx = ?7{guard}"
            ),
            params![
                update.state.as_str(),
                update.error,
                size,
                update.crc32,
                update.attempts,
                id,
                index
            ],
        )
        .map_err(sql("update track"))?;
    if changed == 0 {
        let exists = tx
            .query_row(
                "SELECT 1 FROM tracks WHERE job_id = ?1 AND idx = ?2",
                params![id, index],
                |_| Ok(()),
            )
            .optional()
            .map_err(sql("find track"))?
            .is_some();
        if !exists {
            return Err(StoreError(format!("job {id} has no track {index}")));
        }
        return Ok(false);
    }
    if update.state.is_settled() {
        tx.execute(
            "UPDATE jobs SET updated_at = ?1 WHERE id = ?2",
            params![to_i64(unix_now())?, id],
        )
        .map_err(sql("update job time"))?;
    }
    Ok(true)
}

const TRACK_COLUMNS: &str = "tracks.track_id, tracks.url, tracks.title, tracks.artist, \
    tracks.state, tracks.error, tracks.size, tracks.crc32, tracks.attempts, tracks.cache_key";

type TrackColumns = (
    TrackSpec,
    String,
    Option<String>,
    Option<i64>,
    Option<u32>,
    u32,
);

/// The `TRACK_COLUMNS` of a row, from column `first` on.
fn track_columns(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TrackColumns> {
    Ok((
        TrackSpec {
            id: row.get(first)?,
            url: row.get(first + 1)?,
            title: row.get(first + 2)?,
            artist: row.get(first + 3)?,
            cache_key: row.get(first + 9)?,
        },
        row.get(first + 4)?,
        row.get(first + 5)?,
        row.get(first + 6)?,
        row.get(first + 7)?,
        row.get(first + 8)?,
    ))
}

fn track_record(
    (spec, state, error, size, crc32, attempts): TrackColumns,
) -> Result<TrackRecord, StoreError> {
    Ok(TrackRecord {
        spec,
        state: TrackState::parse(&state)
            .ok_or_else(|| StoreError(format!("unknown track state {state:?}")))?,
        error,
        size: size.map(to_u64).transpose()?,
        crc32,
        attempts,
    })
}

fn parse_status(s: &str) -> Result<JobStatus, StoreError> {
    JobStatus::parse(s).ok_or_else(|| StoreError(format!("unknown job status {s:?}")))
}

/// SQLite integers are signed 64-bit.
fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError(format!("{n} does not fit in SQLite")))
}

fn to_u64(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError(format!("negative value {n} in the database")))
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError(format!("sqlite {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_job_id;

    fn specs(n: usize) -> Vec<TrackSpec> {
        (0..n)
            .map(|i| TrackSpec {
                id: format!("{}", 1000 + i),
                url: format!("https://soundcloud.com/artist/track-{i}"),
                title: format!("Title {i} — ünïcode"),
                artist: format!("Artist {i}"),
                cache_key: None,
            })
            .collect()
    }

    fn job(owner: &str, tracks: usize, now: u64) -> Job {
        Job::new(new_job_id(), owner.into(), specs(tracks), now, 3600)
    }

    fn temp_store() -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("jobs.sqlite3");
        let store = SqliteStore::open(&path).unwrap();
        (dir, path, store)
    }

    #[tokio::test]
    async fn a_job_round_trips_through_the_file() {
        let (_dir, _path, store) = temp_store();
        let job = job("alice", 3, unix_now());
        assert_eq!(store.create(&job, None).await.unwrap(), Created::New);
        assert_eq!(store.get(&job.id).await.unwrap(), Some(job.clone()));
        assert_eq!(
            store.status(&job.id).await.unwrap(),
            Some(JobStatus::Queued)
        );
        assert_eq!(store.get(&new_job_id()).await.unwrap(), None);
        assert_eq!(store.status(&new_job_id()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_same_job_id_twice_is_an_error() {
        let (_dir, _path, store) = temp_store();
        let job = job("alice", 1, 10);
        store.create(&job, None).await.unwrap();
        assert!(store.create(&job, None).await.is_err());
    }

    #[tokio::test]
    async fn an_idempotency_key_names_one_job_per_owner() {
        let (_dir, _path, store) = temp_store();
        let first = job("alice", 2, 100);
        let again = job("alice", 2, 101);
        let bob = job("bob", 2, 102);
        assert_eq!(
            store.create(&first, Some("k1")).await.unwrap(),
            Created::New
        );
        assert_eq!(
            store.create(&again, Some("k1")).await.unwrap(),
            Created::Existing(first.id.clone())
        );
        assert_eq!(store.get(&again.id).await.unwrap(), None, "nothing stored");
        assert_eq!(store.create(&bob, Some("k1")).await.unwrap(), Created::New);
        // No key never collides.
        assert_eq!(store.create(&again, None).await.unwrap(), Created::New);
        assert_eq!(
            store.create(&job("alice", 1, 103), None).await.unwrap(),
            Created::New
        );
    }

    #[tokio::test]
    async fn an_expired_job_frees_its_idempotency_key() {
        let (_dir, _path, store) = temp_store();
        let old = Job::new(new_job_id(), "alice".into(), specs(1), 100, 10);
        store.create(&old, Some("k")).await.unwrap();
        let later = Job::new(new_job_id(), "alice".into(), specs(1), 111, 10);
        assert_eq!(store.create(&later, Some("k")).await.unwrap(), Created::New);
        let again = Job::new(new_job_id(), "alice".into(), specs(1), 112, 10);
        assert_eq!(
            store.create(&again, Some("k")).await.unwrap(),
            Created::Existing(later.id.clone())
        );
        assert!(
            store.get(&old.id).await.unwrap().is_some(),
            "kept until delete_expired"
        );
    }

    #[tokio::test]
    async fn transitions_are_conditional() {
        use JobStatus::*;
        let (_dir, _path, store) = temp_store();
        let job = job("alice", 1, 100);
        store.create(&job, None).await.unwrap();
        let none = Outcome::default();
        assert!(!store
            .transition(&job.id, &[Running], Done, &none)
            .await
            .unwrap());
        assert!(store
            .transition(&job.id, &[Queued], Running, &none)
            .await
            .unwrap());
        assert!(store
            .transition(&job.id, &[Running], Running, &none)
            .await
            .unwrap());
        let done = Outcome {
            error: None,
            zip_key: Some("alice/x/xomcloud-tracks.zip".into()),
        };
        assert!(store
            .transition(&job.id, &[Running], Done, &done)
            .await
            .unwrap());
        assert!(!store
            .transition(&job.id, &[Queued, Running], Cancelled, &none)
            .await
            .unwrap());
        let stored = store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, Done);
        assert_eq!(stored.zip_key, done.zip_key);
        assert!(stored.updated_at >= job.updated_at);
        assert!(store
            .transition(&job.id, &[Done], Cancelled, &none)
            .await
            .is_err());
        assert!(!store
            .transition(&new_job_id(), &[Queued], Running, &none)
            .await
            .unwrap());
        assert!(!store
            .transition(&job.id, &[], Running, &none)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_failure_keeps_its_error() {
        use JobStatus::*;
        let (_dir, _path, store) = temp_store();
        let job = job("alice", 1, 100);
        store.create(&job, None).await.unwrap();
        let failed = Outcome {
            error: Some("All 1 downloads failed".into()),
            zip_key: None,
        };
        assert!(store
            .transition(&job.id, &[Queued], Failed, &failed)
            .await
            .unwrap());
        let stored = store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.error, stored.zip_key),
            (Failed, failed.error, None)
        );
    }

    #[tokio::test]
    async fn track_updates_are_written_and_cleared() {
        let (_dir, _path, store) = temp_store();
        let job = job("alice", 3, 100);
        store.create(&job, None).await.unwrap();
        let failed = TrackUpdate {
            state: TrackState::Failed,
            error: Some("Track not found".into()),
            size: None,
            crc32: None,
            attempts: 2,
        };
        store.update_track(&job.id, 1, &failed).await.unwrap();
        let done = TrackUpdate {
            state: TrackState::Done,
            error: None,
            size: Some(5_000_000_000),
            crc32: Some(u32::MAX),
            attempts: 3,
        };
        store.update_track(&job.id, 1, &done).await.unwrap();
        let stored = store.get(&job.id).await.unwrap().unwrap();
        let mut expected = job.tracks.clone();
        expected[1].apply(&done);
        assert_eq!(stored.tracks, expected);
        assert_eq!((stored.done_count(), stored.settled_count()), (1, 1));
        assert!(stored.updated_at > job.updated_at);
        assert!(store.update_track(&job.id, 3, &done).await.is_err());
        assert!(store.update_track(&new_job_id(), 0, &done).await.is_err());
    }

    #[tokio::test]
    async fn unfinished_lists_queued_and_running_oldest_first() {
        use JobStatus::*;
        let (_dir, _path, store) = temp_store();
        let none = Outcome::default();
        // Created out of order: the listing follows created_at, not insertion.
        let newest = job("a", 1, 300);
        let oldest = job("a", 1, 100);
        let middle = job("a", 1, 200);
        let finished = job("a", 1, 50);
        for j in [&newest, &oldest, &middle, &finished] {
            store.create(j, None).await.unwrap();
        }
        store
            .transition(&middle.id, &[Queued], Running, &none)
            .await
            .unwrap();
        store
            .transition(&finished.id, &[Queued], Cancelled, &none)
            .await
            .unwrap();
        assert_eq!(
            store.unfinished().await.unwrap(),
            vec![oldest.id.clone(), middle.id.clone(), newest.id.clone()]
        );
    }

    #[tokio::test]
    async fn expired_jobs_are_deleted_with_their_tracks() {
        let (_dir, _path, store) = temp_store();
        let short = Job::new(new_job_id(), "a".into(), specs(2), 100, 10);
        let long = Job::new(new_job_id(), "a".into(), specs(2), 100, 1000);
        store.create(&short, None).await.unwrap();
        store.create(&long, None).await.unwrap();
        assert_eq!(
            store.delete_expired(110).await.unwrap(),
            0,
            "not after expires_at yet"
        );
        assert_eq!(store.delete_expired(111).await.unwrap(), 1);
        assert_eq!(store.get(&short.id).await.unwrap(), None);
        assert_eq!(store.get(&long.id).await.unwrap(), Some(long.clone()));
        let orphans: i64 = store
            .with_conn(|conn| {
                conn.query_row("SELECT COUNT(*) FROM tracks", [], |r| r.get(0))
                    .map_err(sql("count"))
            })
            .await
            .unwrap();
        assert_eq!(orphans, 2, "only the kept job's tracks remain");
    }

    #[tokio::test]
    async fn a_reopened_file_reads_back_the_same_jobs() {
        let (_dir, path, store) = temp_store();
        let job = job("alice", 4, 100);
        store.create(&job, Some("key")).await.unwrap();
        store
            .transition(
                &job.id,
                &[JobStatus::Queued],
                JobStatus::Running,
                &Outcome::default(),
            )
            .await
            .unwrap();
        let update = TrackUpdate {
            state: TrackState::Downloading,
            error: None,
            size: None,
            crc32: None,
            attempts: 1,
        };
        store.update_track(&job.id, 0, &update).await.unwrap();
        let before = store.get(&job.id).await.unwrap().unwrap();
        drop(store);

        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.get(&job.id).await.unwrap(), Some(before));
        assert_eq!(reopened.unfinished().await.unwrap(), vec![job.id.clone()]);
        let retry = Job::new(new_job_id(), "alice".into(), specs(1), 101, 3600);
        assert_eq!(
            reopened.create(&retry, Some("key")).await.unwrap(),
            Created::Existing(job.id.clone())
        );
    }

    #[tokio::test]
    async fn a_version_1_file_gains_the_new_columns_and_keeps_its_jobs() {
        let (_dir, path, store) = temp_store();
        let old = job("alice", 2, 100);
        store.create(&old, None).await.unwrap();
        drop(store);
        // Back to version 1: the same tables without `caller` (2) and `cache_key` (3).
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX jobs_caller_status; ALTER TABLE jobs DROP COLUMN caller; \
             ALTER TABLE tracks DROP COLUMN cache_key; PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).unwrap().with_active_limit(1);
        assert_eq!(store.get(&old.id).await.unwrap(), Some(old));
        let counted = job("alice", 1, 200).with_caller("c");
        assert_eq!(store.create(&counted, None).await.unwrap(), Created::New);
        assert_eq!(store.get(&counted.id).await.unwrap(), Some(counted));
        let mut keyed = job("alice", 1, 300);
        keyed.tracks[0].spec.cache_key = Some("sc42".into());
        store.create(&keyed, None).await.unwrap();
        assert_eq!(store.get(&keyed.id).await.unwrap(), Some(keyed));
        let second = job("alice", 1, 201).with_caller("c");
        assert_eq!(
            store.create(&second, None).await.unwrap(),
            Created::TooManyActive
        );
    }

    #[tokio::test]
    async fn an_unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test]
    async fn in_memory_works_for_tests() {
        let store = SqliteStore::open_in_memory().unwrap();
        let job = job("alice", 1, 100);
        store.create(&job, None).await.unwrap();
        assert_eq!(store.get(&job.id).await.unwrap(), Some(job));
    }
}
