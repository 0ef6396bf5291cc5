//! `POST /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}` without any transport: the Lambda and the
//! local server call `JobsApi::handle` with the method, the path after `/jobs`, the body, the
//! authorizer's principal, the client's address and the URL the caller used for `/jobs`.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Response};
use serde::Serialize;
use serde_json::json;
use xomcloud_common::response::Cors;
use xomcloud_common::storage::{unix_now, Storage};
use xomcloud_common::ApiError;
use xomcloud_jobs::model::{is_job_id, new_job_id, Job, JobStatus, Outcome, TrackSpec, TrackState};
use xomcloud_jobs::queue::{JobMessage, JobQueue};
use xomcloud_jobs::store::{Created, JobStore};

use crate::jobs::cache::{cache_object, track_key};
use crate::limits::{too_many_active, Limits};
use crate::naming::assign_names;
use crate::validate::{parse_job_request, Track};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// What a request to the jobs API carries besides its method.
pub struct JobsRequest<'a> {
    /// The path below `/jobs`: empty for the collection, else `/{id}`.
    pub rest: &'a str,
    pub body: &'a [u8],
    pub principal: Option<&'a str>,
    /// The client's address (API Gateway's `sourceIp`, serve's peer): with the principal, the
    /// caller that rate limits and the active-jobs limit count.
    pub address: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    /// The absolute URL of `/jobs` as the caller reached it (stage prefix included).
    pub jobs_url: &'a str,
}

pub struct JobsApi {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub storage: Arc<dyn Storage>,
    pub max_tracks: usize,
    pub ttl: Duration,
    pub presign_expiry: Duration,
    pub cors: Cors,
    /// Per-caller rate limit on creating jobs (shared with `/download`).
    pub limits: Limits,
    /// `MAX_ACTIVE_JOBS_PER_CALLER`, which the store enforces (0: none); named in the 429.
    pub max_active_jobs: u32,
}

#[derive(Serialize)]
struct TrackView<'a> {
    id: &'a str,
    title: &'a str,
    artist: &'a str,
    /// The track's state, or `cancelled` for a track a cancelled job never settled.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// A `done` track's own MP3 in the shared cache, presigned at each GET and named as its
    /// zip entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// Where the path names a job: `Some(id)` for `/{id}`, `None` for the collection; `Err` for
/// anything else (a malformed id is indistinguishable from an unknown one).
fn job_path(rest: &str) -> Result<Option<&str>, ApiError> {
    match rest.trim_end_matches('/') {
        "" => Ok(None),
        path => match path.strip_prefix('/') {
            Some(id) if !id.contains('/') => Ok(Some(id)),
            _ => Err(not_found()),
        },
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("No such job".into())
}

/// The `Idempotency-Key` header as text; a value that is not text comes out as a string the
/// validator refuses, as it refuses one too long.
pub fn idempotency_key(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// Printable ASCII, 1 to 128 characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ApiError::validation(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        ))
    })
}

impl JobsApi {
    pub async fn handle(&self, method: &Method, request: &JobsRequest<'_>) -> Response<String> {
        if *method == Method::OPTIONS {
            return self.cors.preflight();
        }
        let result = match (method.clone(), job_path(request.rest)) {
            (_, Err(e)) => Err(e),
            (Method::POST, Ok(None)) => self.create(request).await,
            (Method::GET, Ok(Some(id))) => self.show(id, request.principal).await,
            (Method::DELETE, Ok(Some(id))) => self.cancel(id, request.principal).await,
            (_, Ok(_)) => Err(ApiError::NotFound(format!(
                "{method} is not supported here"
            ))),
        };
        match result {
            Ok(response) => response,
            Err(err) => self.cors.error(&err),
        }
    }

    fn principal<'a>(&self, principal: Option<&'a str>) -> Result<&'a str, ApiError> {
        principal
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::Auth("Jobs need an authenticated caller".into()))
    }

    /// A valid creation takes a token of its caller's bucket first; its answer, whatever it is,
    /// carries the caller's budget.
    async fn create(&self, request: &JobsRequest<'_>) -> Result<Response<String>, ApiError> {
        let owner = self.principal(request.principal)?;
        if let Some(key) = request.idempotency_key {
            check_idempotency_key(key)?;
        }
        let parsed = parse_job_request(request.body, self.max_tracks)?;
        let caller = xomcloud_jobs::limiter::caller_key(request.principal, request.address);
        let budget = match self.limits.admit(&caller, &self.cors).await {
            Ok(budget) => budget,
            Err(refused) => return Ok(refused),
        };
        let specs = parsed.tracks.into_iter().map(TrackSpec::from).collect();
        let job = Job::new(
            new_job_id(),
            owner.to_owned(),
            specs,
            unix_now(),
            self.ttl.as_secs(),
        )
        .with_caller(caller);
        let mut response = match self.store_and_queue(&job, request).await {
            Ok(Some(response)) => response,
            Ok(None) => too_many_active(&self.cors, self.max_active_jobs, budget),
            Err(err) => self.cors.error(&err),
        };
        budget.stamp(&mut response);
        Ok(response)
    }

    /// The 202 of a new (or idempotently repeated) job; `None` when the caller has too many
    /// active jobs.
    async fn store_and_queue(
        &self,
        job: &Job,
        request: &JobsRequest<'_>,
    ) -> Result<Option<Response<String>>, ApiError> {
        let created = self
            .store
            .create(job, request.idempotency_key)
            .await
            .map_err(ApiError::internal)?;
        let existing;
        let job = match created {
            Created::New => {
                let message = JobMessage::start(&job.id);
                if let Err(e) = self.queue.send(&message).await {
                    let outcome = Outcome {
                        error: Some("The job could not be queued".into()),
                        zip_key: None,
                    };
                    let _ = self
                        .store
                        .transition(&job.id, &[JobStatus::Queued], JobStatus::Failed, &outcome)
                        .await;
                    return Err(ApiError::internal(e));
                }
                tracing::info!(job = %job.id, tracks = job.tracks.len(), "job queued");
                job
            }
            Created::TooManyActive => {
                tracing::info!(caller = job.caller.as_deref(), "too many active jobs");
                return Ok(None);
            }
            Created::Existing(id) => {
                existing = self
                    .store
                    .get(&id)
                    .await
                    .map_err(ApiError::internal)?
                    .ok_or_else(|| ApiError::internal("an idempotency key names a missing job"))?;
                &existing
            }
        };
        let status_url = format!("{}/{}", request.jobs_url.trim_end_matches('/'), job.id);
        let body = json!({"data": {
            "job_id": job.id,
            "status": job.status,
            "status_url": status_url,
            "total": job.tracks.len(),
        }});
        let mut response = self.cors.json(202, &body);
        if let Ok(location) = HeaderValue::from_str(&status_url) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(Some(response))
    }

    /// The caller's job; another principal's, a malformed or an unknown id are all the same 404.
    async fn find(&self, id: &str, principal: Option<&str>) -> Result<Job, ApiError> {
        let owner = self.principal(principal)?;
        if !is_job_id(id) {
            return Err(not_found());
        }
        match self.store.get(id).await.map_err(ApiError::internal)? {
            Some(job) if job.owner == owner => Ok(job),
            _ => Err(not_found()),
        }
    }

    async fn show(&self, id: &str, principal: Option<&str>) -> Result<Response<String>, ApiError> {
        let job = self.find(id, principal).await?;
        Ok(self.cors.ok(Some(self.view(&job).await?)))
    }

    async fn cancel(
        &self,
        id: &str,
        principal: Option<&str>,
    ) -> Result<Response<String>, ApiError> {
        let job = self.find(id, principal).await?;
        if !matches!(job.status, JobStatus::Queued | JobStatus::Running) {
            return self.not_cancellable(&job).await;
        }
        let cancelled = self
            .store
            .transition(
                id,
                &[JobStatus::Queued, JobStatus::Running],
                JobStatus::Cancelled,
                &Outcome::default(),
            )
            .await
            .map_err(ApiError::internal)?;
        let job = self.find(id, principal).await?;
        if !cancelled {
            // It ended (or was cancelled) between the read and the write.
            return self.not_cancellable(&job).await;
        }
        tracing::info!(job = id, "job cancelled");
        Ok(self
            .cors
            .json(202, &json!({ "data": self.view(&job).await? })))
    }

    /// The answer to cancelling a job that is already final: 200 when it is cancelled, else 409.
    async fn not_cancellable(&self, job: &Job) -> Result<Response<String>, ApiError> {
        if job.status == JobStatus::Cancelled {
            return Ok(self.cors.ok(Some(self.view(job).await?)));
        }
        Err(ApiError::Conflict(format!(
            "The job is {} and can no longer be cancelled",
            job.status.as_str()
        )))
    }

    async fn view(&self, job: &Job) -> Result<serde_json::Value, ApiError> {
        let specs: Vec<Track> = job.tracks.iter().map(|t| Track::from(&t.spec)).collect();
        let names = assign_names(&specs);
        let mut urls = Vec::with_capacity(job.tracks.len());
        for (track, name) in job.tracks.iter().zip(&names) {
            urls.push(match track.state {
                TrackState::Done => {
                    let object = cache_object(&track_key(&track.spec));
                    let url = self
                        .storage
                        .presign_named(&object, self.presign_expiry, name)
                        .await
                        .map_err(ApiError::internal)?;
                    Some(url)
                }
                _ => None,
            });
        }
        let tracks: Vec<TrackView> = job
            .tracks
            .iter()
            .zip(urls)
            .map(|(t, url)| TrackView {
                id: &t.spec.id,
                title: &t.spec.title,
                artist: &t.spec.artist,
                state: match t.state {
                    state if job.status == JobStatus::Cancelled && !state.is_settled() => {
                        "cancelled"
                    }
                    state => state.as_str(),
                },
                error: t.error.as_deref(),
                url,
            })
            .collect();
        let mut data = json!({
            "job_id": job.id,
            "status": job.status,
            "total": job.tracks.len(),
            "done": job.done_count(),
            "failed_count": job.failed_count(),
            "settled": job.settled_count(),
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "tracks": tracks,
        });
        if let Some(error) = &job.error {
            data["error"] = json!(error);
        }
        if let (JobStatus::Done, Some(key)) = (job.status, &job.zip_key) {
            let url = self
                .storage
                .presign_get(key, self.presign_expiry)
                .await
                .map_err(ApiError::internal)?;
            data["download_url"] = json!(url);
            data["expires_in"] = json!(self.presign_expiry.as_secs());
        }
        Ok(data)
    }
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(job_path("").unwrap(), None);
        assert_eq!(job_path("/").unwrap(), None);
        assert_eq!(job_path("/abc").unwrap(), Some("abc"));
        assert_eq!(job_path("/abc/").unwrap(), Some("abc"));
        assert!(job_path("/abc/def").is_err());
        assert!(job_path("abc").is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert!(check_idempotency_key("order-42").is_ok());
        assert!(check_idempotency_key(&"k".repeat(128)).is_ok());
        assert!(check_idempotency_key(&"k".repeat(129)).is_err());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("tab\there").is_err());
        assert!(check_idempotency_key("ключ").is_err());
    }
}
