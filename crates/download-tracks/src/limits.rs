//! Per-caller limits on creating downloads and jobs (`POST /download`, `/download/tracks`,
//! `/jobs`), as the API answers them: a token bucket per caller (principal + client address),
//! and over it a 429 `RATE_LIMITED` with `Retry-After` and the fields of
//! draft-ietf-httpapi-ratelimit-headers-09:
//!
//! ```text
//! RateLimit-Policy: "per-caller";q=10;w=60      RATE_LIMIT_PER_MINUTE per 60 s
//! RateLimit: "per-caller";r=4;t=6               4 left; the bucket is full again in 6 s
//! ```
//!
//! Every request that passed validation takes a token, and its answer carries both fields.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Response};
use xomcloud_common::response::Cors;
use xomcloud_common::ApiError;
use xomcloud_jobs::limiter::{Bucket, RateLimiter, Verdict};

/// The policy's name in both fields.
pub const POLICY: &str = "per-caller";
/// `Retry-After` of a job refused for the caller's active jobs: about the time a short job takes.
pub const ACTIVE_JOBS_RETRY_AFTER: u64 = 10;

/// The limiter in effect, or none (limits off).
#[derive(Clone, Default)]
pub struct Limits {
    limiter: Option<Arc<dyn RateLimiter>>,
}

/// What an admitted request's answer tells about the caller's budget (nothing when off).
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget(Option<(Bucket, Verdict)>);

impl Limits {
    pub fn off() -> Self {
        Self::default()
    }

    pub fn new(limiter: Arc<dyn RateLimiter>) -> Self {
        Self {
            limiter: Some(limiter),
        }
    }

    pub fn bucket(&self) -> Option<Bucket> {
        self.limiter.as_ref().map(|l| l.bucket())
    }

    /// Takes one token of `caller` (a [`xomcloud_jobs::limiter::caller_key`]); `Err` is the
    /// 429 to answer. A limiter that fails lets the request through (and says so in the logs):
    /// the stage's throttling still caps the whole API.
    pub async fn admit(&self, caller: &str, cors: &Cors) -> Result<Budget, Response<String>> {
        let Some(limiter) = &self.limiter else {
            return Ok(Budget(None));
        };
        let bucket = limiter.bucket();
        match limiter.acquire(caller).await {
            Ok(verdict) if verdict.allowed => Ok(Budget(Some((bucket, verdict)))),
            Ok(verdict) => {
                tracing::info!(caller, retry_after = verdict.retry_after, "rate limited");
                let err = ApiError::RateLimited(format!(
                    "Too many requests: at most {} a minute ({} at once); retry in {} s",
                    bucket.per_minute(),
                    bucket.burst(),
                    verdict.retry_after
                ));
                let mut response = cors.error(&err);
                Budget(Some((bucket, verdict))).stamp(&mut response);
                set(
                    &mut response,
                    "retry-after",
                    verdict.retry_after.to_string(),
                );
                Err(response)
            }
            Err(e) => {
                tracing::error!(error = %e, "rate limiter failed; letting the request through");
                Ok(Budget(None))
            }
        }
    }
}

impl Budget {
    /// Adds `RateLimit-Policy` and `RateLimit` (when limits are on).
    pub fn stamp(&self, response: &mut Response<String>) {
        let Some((bucket, verdict)) = self.0 else {
            return;
        };
        set(response, "ratelimit-policy", policy_field(bucket));
        set(response, "ratelimit", budget_field(&verdict));
    }
}

/// The 429 of a job refused because its caller has `limit` active jobs already.
pub fn too_many_active(cors: &Cors, limit: u32, budget: Budget) -> Response<String> {
    let err = ApiError::RateLimited(format!(
        "Too many active jobs: at most {limit} at once; wait for one to finish or cancel one"
    ));
    let mut response = cors.error(&err);
    budget.stamp(&mut response);
    set(
        &mut response,
        "retry-after",
        ACTIVE_JOBS_RETRY_AFTER.to_string(),
    );
    response
}

/// `"per-caller";q={per minute};w=60`
pub fn policy_field(bucket: Bucket) -> String {
    format!("\"{POLICY}\";q={};w=60", bucket.per_minute())
}

/// `"per-caller";r={tokens left};t={seconds until the bucket is full}`
pub fn budget_field(verdict: &Verdict) -> String {
    format!("\"{POLICY}\";r={};t={}", verdict.remaining, verdict.reset)
}

fn set(response: &mut Response<String>, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

#[cfg(test)]
mod tests {
    use xomcloud_jobs::limiter::MemoryLimiter;

    use super::*;

    fn header<'a>(r: &'a Response<String>, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn admitted_answers_carry_the_budget_and_the_refusal_is_a_429_with_the_fields() {
        let bucket = Bucket::new(10, 2).unwrap();
        let limits = Limits::new(Arc::new(MemoryLimiter::with_clock(
            bucket,
            Arc::new(|| 1_000_000),
        )));
        let cors = Cors::new(None);
        let mut ok = cors.ok(None);
        limits.admit("c", &cors).await.unwrap().stamp(&mut ok);
        assert_eq!(
            header(&ok, "ratelimit-policy"),
            Some("\"per-caller\";q=10;w=60")
        );
        assert_eq!(header(&ok, "ratelimit"), Some("\"per-caller\";r=1;t=6"));
        assert_eq!(header(&ok, "retry-after"), None);
        limits.admit("c", &cors).await.unwrap();
        let refused = limits.admit("c", &cors).await.unwrap_err();
        assert_eq!(refused.status(), 429);
        let body: serde_json::Value = serde_json::from_str(refused.body()).unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert_eq!(header(&refused, "retry-after"), Some("6"));
        assert_eq!(
            header(&refused, "ratelimit"),
            Some("\"per-caller\";r=0;t=12")
        );
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            Some("\"per-caller\";q=10;w=60")
        );
        assert!(header(&refused, "access-control-expose-headers")
            .unwrap()
            .contains("RateLimit-Policy"));
        // Off: nothing is added, nothing refused.
        let mut plain = cors.ok(None);
        Limits::off()
            .admit("c", &cors)
            .await
            .unwrap()
            .stamp(&mut plain);
        assert_eq!(header(&plain, "ratelimit"), None);
    }

    #[test]
    fn too_many_active_jobs_is_a_429_with_retry_after() {
        let r = too_many_active(&Cors::new(None), 3, Budget::default());
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after"), Some("10"));
        let body: serde_json::Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3"));
    }
}
