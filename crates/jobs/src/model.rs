//! A download job and its tracks, and the one place that says which status changes are allowed.

use serde::{Deserialize, Serialize};

pub const JOB_ID_LEN: usize = 32;

/// 128 random bits (rand::random::<u128>()) as 32 lowercase hex chars.
pub fn new_job_id() -> String {
    job_id_from_bits(rand::random::<u128>())
}

fn job_id_from_bits(bits: u128) -> String {
    format!("{bits:032x}")
}

/// Exactly 32 chars of `[0-9a-f]`.
pub fn is_job_id(s: &str) -> bool {
    s.len() == JOB_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Done | Failed | Cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The allowed transitions, in one place: Queued→Running|Failed|Cancelled,
    /// Running→Running (a resumed run)|Done|Failed|Cancelled|Queued (hand back), nothing out of
    /// a final state.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            Queued => matches!(next, Running | Failed | Cancelled),
            Running => matches!(next, Running | Done | Failed | Cancelled | Queued),
            Done | Failed | Cancelled => false,
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackState {
    Queued,
    Downloading,
    Done,
    Failed,
}

impl TrackState {
    pub const ALL: [TrackState; 4] = [
        TrackState::Queued,
        TrackState::Downloading,
        TrackState::Done,
        TrackState::Failed,
    ];

    /// Done | Failed.
    pub fn is_settled(self) -> bool {
        matches!(self, TrackState::Done | TrackState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrackState::Queued => "queued",
            TrackState::Downloading => "downloading",
            TrackState::Done => "done",
            TrackState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSpec {
    pub id: String,
    pub url: String,
    pub title: String,
    pub artist: String,
    /// The shared track cache's key when the server set it: `sc{SoundCloud's track id}` once
    /// resolution read the track's metadata. `None` (every entry a client sends): the key of
    /// the URL. Never from a request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecord {
    #[serde(flatten)]
    pub spec: TrackSpec,
    pub state: TrackState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when `Done`: the stored MP3's size and CRC-32 (so the zip is written without re-reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    #[serde(default)]
    pub attempts: u32,
}

impl TrackRecord {
    /// A track not started yet.
    pub fn queued(spec: TrackSpec) -> TrackRecord {
        TrackRecord {
            spec,
            state: TrackState::Queued,
            error: None,
            size: None,
            crc32: None,
            attempts: 0,
        }
    }

    /// Overwrites the fields a [`TrackUpdate`] carries.
    pub fn apply(&mut self, update: &TrackUpdate) {
        self.state = update.state;
        self.error = update.error.clone();
        self.size = update.size;
        self.crc32 = update.crc32;
        self.attempts = update.attempts;
    }

    /// The fields [`TrackRecord::apply`] writes, as they are now.
    pub fn update(&self) -> TrackUpdate {
        TrackUpdate {
            state: self.state,
            error: self.error.clone(),
            size: self.size,
            crc32: self.crc32,
            attempts: self.attempts,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The authenticated principal; only it may see the job.
    pub owner: String,
    pub status: JobStatus,
    /// Unix seconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// Unix seconds after which the record may be dropped (DynamoDB TTL attribute `expires_at`).
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The zip's storage key once `Done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_key: Option<String>,
    /// The creating caller's key (a hash of principal and address,
    /// [`crate::limiter::caller_key`]): a store with an active-jobs limit counts the job against
    /// it until the job is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    pub tracks: Vec<TrackRecord>,
}

impl Job {
    /// A queued job: every track `Queued`, attempts 0.
    pub fn new(
        id: String,
        owner: String,
        specs: Vec<TrackSpec>,
        now: u64,
        ttl_seconds: u64,
    ) -> Job {
        Job {
            id,
            owner,
            status: JobStatus::Queued,
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(ttl_seconds),
            error: None,
            zip_key: None,
            caller: None,
            tracks: specs.into_iter().map(TrackRecord::queued).collect(),
        }
    }

    /// The same job, counted against `caller`'s active jobs.
    pub fn with_caller(mut self, caller: impl Into<String>) -> Job {
        self.caller = Some(caller.into());
        self
    }

    pub fn done_count(&self) -> usize {
        self.count(|state| state == TrackState::Done)
    }

    pub fn failed_count(&self) -> usize {
        self.count(|state| state == TrackState::Failed)
    }

    pub fn settled_count(&self) -> usize {
        self.count(TrackState::is_settled)
    }

    fn count(&self, pick: impl Fn(TrackState) -> bool) -> usize {
        self.tracks.iter().filter(|t| pick(t.state)).count()
    }
}

/// One track's change, written by the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackUpdate {
    pub state: TrackState,
    pub error: Option<String>,
    pub size: Option<u64>,
    pub crc32: Option<u32>,
    pub attempts: u32,
}

impl TrackUpdate {
    /// Being fetched (its `attempts`-th try), or waiting for another job's fetch (0).
    pub fn downloading(attempts: u32) -> Self {
        Self {
            state: TrackState::Downloading,
            error: None,
            size: None,
            crc32: None,
            attempts,
        }
    }

    /// Stored: its size and CRC-32.
    pub fn done(size: u64, crc32: u32, attempts: u32) -> Self {
        Self {
            state: TrackState::Done,
            error: None,
            size: Some(size),
            crc32: Some(crc32),
            attempts,
        }
    }

    pub fn failed(error: impl Into<String>, attempts: u32) -> Self {
        Self {
            state: TrackState::Failed,
            error: Some(error.into()),
            size: None,
            crc32: None,
            attempts,
        }
    }
}

/// What `transition` writes besides the status; a `None` field leaves the stored value as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub error: Option<String>,
    pub zip_key: Option<String>,
}

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn new_ids_are_job_ids_and_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_job_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(is_job_id(id), "{id}");
            assert_eq!(id.len(), JOB_ID_LEN);
        }
    }

    #[test]
    fn small_ids_are_zero_padded() {
        // About one id in 16 starts with a zero nibble; it must still have 32 chars.
        assert_eq!(job_id_from_bits(5), format!("{}5", "0".repeat(31)));
        assert_eq!(job_id_from_bits(u128::MAX), "f".repeat(32));
    }

    #[test]
    fn job_id_check_refuses_everything_else() {
        let good = "0123456789abcdef0123456789abcdef";
        assert!(is_job_id(good));
        for bad in [
            "",
            &good[1..],
            &format!("{good}0"),
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdeg0123456789abcdef",
            "0123456789abcdef0123456789abcde/",
            "../../../../../../../etc/passwd00",
        ] {
            assert!(!is_job_id(bad), "{bad:?}");
        }
        // 32 bytes, but not 32 hex chars.
        let accented = format!("{}é", &good[..30]);
        assert_eq!(accented.len(), JOB_ID_LEN);
        assert!(!is_job_id(&accented));
    }

    #[test]
    fn status_strings_round_trip_and_match_serde() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        assert_eq!(JobStatus::parse("Queued"), None);
        assert_eq!(JobStatus::parse(""), None);
        for state in TrackState::ALL {
            assert_eq!(TrackState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
    }

    #[test]
    fn final_and_settled() {
        let finals: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [Done, Failed, Cancelled]);
        let settled: Vec<TrackState> = TrackState::ALL
            .into_iter()
            .filter(|s| s.is_settled())
            .collect();
        assert_eq!(settled, [TrackState::Done, TrackState::Failed]);
    }

    #[test]
    fn every_transition_is_allowed_or_forbidden_as_designed() {
        let allowed = [
            (Queued, Running),
            (Queued, Failed),
            (Queued, Cancelled),
            (Running, Running),
            (Running, Done),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Queued),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn nothing_leaves_a_final_state() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(
                JobStatus::ALL.iter().all(|&to| !from.can_become(to)),
                "{from}"
            );
        }
    }

    fn spec(n: u32) -> TrackSpec {
        TrackSpec {
            id: n.to_string(),
            url: format!("https://soundcloud.com/a/t{n}"),
            title: format!("T{n}"),
            artist: "A".into(),
            cache_key: None,
        }
    }

    #[test]
    fn a_new_job_is_queued_with_queued_tracks() {
        let job = Job::new(
            "a".repeat(32),
            "alice".into(),
            vec![spec(1), spec(2)],
            100,
            50,
        );
        assert_eq!(job.status, Queued);
        assert_eq!(
            (job.created_at, job.updated_at, job.expires_at),
            (100, 100, 150)
        );
        assert_eq!(job.tracks.len(), 2);
        assert!(job
            .tracks
            .iter()
            .all(|t| t.state == TrackState::Queued && t.attempts == 0 && t.error.is_none()));
        assert_eq!(job.tracks[1].spec, spec(2));
        assert_eq!(
            Job::new("x".into(), "o".into(), vec![], u64::MAX, 9).expires_at,
            u64::MAX
        );
    }

    #[test]
    fn counts_follow_track_states() {
        let mut job = Job::new("a".repeat(32), "o".into(), (0..5).map(spec).collect(), 0, 1);
        let set = |state| TrackUpdate {
            state,
            error: None,
            size: None,
            crc32: None,
            attempts: 1,
        };
        job.tracks[0].apply(&set(TrackState::Done));
        job.tracks[1].apply(&set(TrackState::Done));
        job.tracks[2].apply(&set(TrackState::Failed));
        job.tracks[3].apply(&set(TrackState::Downloading));
        assert_eq!(job.done_count(), 2);
        assert_eq!(job.failed_count(), 1);
        assert_eq!(job.settled_count(), 3);
    }

    #[test]
    fn track_json_is_flat_and_omits_empty_fields() {
        let record = TrackRecord::queued(spec(7));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "7", "url": "https://soundcloud.com/a/t7", "title": "T7",
                               "artist": "A", "state": "queued", "attempts": 0})
        );
        let back: TrackRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
