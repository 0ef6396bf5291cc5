//! Buckets in this process's memory, for `xomcloud serve` (one process, so one map is the truth).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{unix_ms, Bucket, LimiterError, RateLimiter, Verdict};

/// Past this many callers, full buckets (a state in the past) are dropped.
const PRUNE_AT: usize = 10_000;

pub type MsClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct MemoryLimiter {
    bucket: Bucket,
    states: Mutex<HashMap<String, u64>>,
    clock: MsClock,
}

impl MemoryLimiter {
    pub fn new(bucket: Bucket) -> Self {
        Self::with_clock(bucket, Arc::new(unix_ms))
    }

    /// With a clock of its own (tests move time by hand).
    pub fn with_clock(bucket: Bucket, clock: MsClock) -> Self {
        Self {
            bucket,
            states: Mutex::default(),
            clock,
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    fn bucket(&self) -> Bucket {
        self.bucket
    }

    async fn acquire(&self, caller: &str) -> Result<Verdict, LimiterError> {
        let now = (self.clock)();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = self.bucket.check(states.get(caller).copied(), now);
        if verdict.allowed {
            if states.len() >= PRUNE_AT {
                states.retain(|_, tat| *tat > now);
            }
            states.insert(caller.to_owned(), verdict.tat);
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn callers_have_their_own_buckets_and_time_refills_them() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        let limiter = MemoryLimiter::with_clock(
            Bucket::new(10, 2).unwrap(),
            Arc::new(move || clock.load(Ordering::SeqCst)),
        );
        let a: Vec<bool> = futures::future::join_all((0..3).map(|_| limiter.acquire("a")))
            .await
            .into_iter()
            .map(|v| v.unwrap().allowed)
            .collect();
        assert_eq!(a.iter().filter(|ok| **ok).count(), 2, "{a:?}");
        assert!(limiter.acquire("b").await.unwrap().allowed, "b is not a");
        now.fetch_add(6_000, Ordering::SeqCst);
        assert!(limiter.acquire("a").await.unwrap().allowed);
        assert!(!limiter.acquire("a").await.unwrap().allowed);
    }
}
