//! Per-caller rate limits on creating downloads and jobs: a token bucket kept as one number per
//! caller (GCRA: the "theoretical arrival time" of the next request), and the `RateLimiter`
//! port with its adapters, in memory for `xomcloud serve` and a DynamoDB item for the Lambda.
//!
//! The bucket holds `burst` tokens and gains one every `60 / per_minute` seconds. A caller's
//! state is `tat`, the instant (ms) at which its bucket will be full again; no state, or a `tat`
//! in the past, is a full bucket. Both adapters run the same arithmetic, so `serve` and the
//! Lambda answer with the same headers.

use async_trait::async_trait;

pub mod dynamodb;
pub mod memory;

pub use dynamodb::DynamoLimiter;
pub use memory::MemoryLimiter;

#[derive(Debug, thiserror::Error)]
#[error("rate limiter: {0}")]
pub struct LimiterError(pub String);

/// `RATE_LIMIT_PER_MINUTE` tokens a minute, at most `RATE_LIMIT_BURST` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    per_minute: u32,
    burst: u32,
}

/// One request's fate, and what its answer tells the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The caller's new state when allowed (unchanged when refused), ms since the epoch.
    pub tat: u64,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset: u64,
    /// Seconds until one more request would be allowed (rounded up, at least 1); 0 when allowed.
    pub retry_after: u64,
}

impl Bucket {
    /// `None` when `per_minute` is 0 (limits off). A burst of 0 counts as 1.
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            per_minute,
            burst: burst.max(1),
        })
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Milliseconds per token (rounded up: never faster than configured).
    pub fn interval_ms(&self) -> u64 {
        60_000u64.div_ceil(u64::from(self.per_minute))
    }

    /// Takes one token at `now` (ms) from a bucket in state `tat` (`None`: never used).
    pub fn check(&self, tat: Option<u64>, now: u64) -> Verdict {
        let interval = self.interval_ms();
        let capacity = interval * u64::from(self.burst);
        // A bucket that was full at some point in the past is just full.
        let start = tat.unwrap_or(now).max(now);
        let next = start + interval;
        if next - now <= capacity {
            Verdict {
                allowed: true,
                tat: next,
                remaining: ((capacity - (next - now)) / interval) as u32,
                reset: seconds(next - now),
                retry_after: 0,
            }
        } else {
            Verdict {
                allowed: false,
                tat: start,
                remaining: 0,
                reset: seconds(start - now),
                retry_after: seconds(next - capacity - now).max(1),
            }
        }
    }
}

fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// Where the buckets are kept. `caller` is already a hash ([`caller_key`]).
#[async_trait]
pub trait RateLimiter: Send + Sync {
    fn bucket(&self) -> Bucket;

    /// Takes one token from `caller`'s bucket, or tells when one will be there.
    async fn acquire(&self, caller: &str) -> Result<Verdict, LimiterError>;
}

/// The caller's key: the principal **and** the client address (one principal may be shared by
/// every visitor of a site), hashed so that neither is stored or logged.
pub fn caller_key(principal: Option<&str>, address: Option<&str>) -> String {
    let text = format!("{}\n{}", principal.unwrap_or(""), address.unwrap_or(""));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds since the epoch (0 before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// 10 a minute (one every 6 s), 5 at once.
    fn bucket() -> Bucket {
        Bucket::new(10, 5).unwrap()
    }

    /// Runs `n` requests at `now`, threading the state; the verdicts.
    fn burst(b: Bucket, mut tat: Option<u64>, now: u64, n: usize) -> Vec<Verdict> {
        (0..n)
            .map(|_| {
                let v = b.check(tat, now);
                tat = Some(v.tat);
                v
            })
            .collect()
    }

    #[test]
    fn zero_per_minute_is_off_and_a_zero_burst_is_one() {
        assert_eq!(Bucket::new(0, 5), None);
        assert_eq!(Bucket::new(10, 0).unwrap().burst(), 1);
        assert_eq!(bucket().interval_ms(), 6_000);
        // 60 000 / 7 is not whole: rounded up, never faster than asked.
        assert_eq!(Bucket::new(7, 1).unwrap().interval_ms(), 8_572);
    }

    #[test]
    fn a_fresh_caller_has_the_whole_burst() {
        let v = bucket().check(None, NOW);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset, v.retry_after), (4, 6, 0));
        assert_eq!(v.tat, NOW + 6_000);
    }

    #[test]
    fn a_burst_drains_the_bucket_then_is_refused() {
        let verdicts = burst(bucket(), None, NOW, 7);
        let remaining: Vec<u32> = verdicts.iter().map(|v| v.remaining).collect();
        let allowed: Vec<bool> = verdicts.iter().map(|v| v.allowed).collect();
        assert_eq!(allowed, [true, true, true, true, true, false, false]);
        assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0]);
        let resets: Vec<u64> = verdicts.iter().map(|v| v.reset).collect();
        assert_eq!(resets, [6, 12, 18, 24, 30, 30, 30]);
        let refused = verdicts[5];
        // One token comes back after one interval; the state does not move while refused.
        assert_eq!(refused.retry_after, 6);
        assert_eq!(refused.tat, verdicts[4].tat);
        assert_eq!(verdicts[6], refused);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let b = bucket();
        let drained = burst(b, None, NOW, 5).last().unwrap().tat;
        // 5.999 s later: still nothing; the wait is rounded up to whole seconds.
        let early = b.check(Some(drained), NOW + 5_999);
        assert!(!early.allowed);
        assert_eq!(early.retry_after, 1);
        // 6 s later: exactly one, and none left.
        let one = b.check(Some(drained), NOW + 6_000);
        assert!(one.allowed);
        assert_eq!((one.remaining, one.reset), (0, 30));
        // 13 s later: two back (one used now, one left).
        let two = b.check(Some(drained), NOW + 13_000);
        assert_eq!((two.allowed, two.remaining), (true, 1));
        assert_eq!(
            two.reset, 23,
            "24 s of debt minus 1 s of change, rounded up"
        );
    }

    #[test]
    fn an_old_state_is_a_full_bucket() {
        let b = bucket();
        let long_ago = b.check(Some(NOW - 3_600_000), NOW);
        assert_eq!(long_ago, b.check(None, NOW));
        // A bucket that refilled exactly now is full too.
        let drained = burst(b, None, NOW, 5).last().unwrap().tat;
        assert_eq!(b.check(Some(drained), drained).remaining, 4);
    }

    #[test]
    fn a_burst_of_one_allows_one_per_interval() {
        let b = Bucket::new(60, 1).unwrap();
        let first = b.check(None, NOW);
        assert_eq!((first.allowed, first.remaining, first.reset), (true, 0, 1));
        let second = b.check(Some(first.tat), NOW + 500);
        assert_eq!((second.allowed, second.retry_after), (false, 1));
        assert!(b.check(Some(first.tat), NOW + 1_000).allowed);
    }

    #[test]
    fn the_sustained_rate_is_the_configured_one() {
        // One request every second for ten minutes against 10/min, burst 5: the first minute
        // allows the burst plus what refills, every later minute exactly 10.
        let b = bucket();
        let mut tat = None;
        let mut allowed_per_minute = [0u32; 10];
        for second in 0..600u64 {
            let v = b.check(tat, NOW + second * 1_000);
            if v.allowed {
                tat = Some(v.tat);
                allowed_per_minute[(second / 60) as usize] += 1;
            }
        }
        assert_eq!(allowed_per_minute[0], 5 + 9);
        assert!(
            allowed_per_minute[1..].iter().all(|n| *n == 10),
            "{allowed_per_minute:?}"
        );
    }

    #[test]
    fn caller_keys_hash_principal_and_address_apart() {
        let a = caller_key(Some("front-end"), Some("203.0.113.7"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, caller_key(Some("front-end"), Some("203.0.113.7")));
        assert_ne!(a, caller_key(Some("front-end"), Some("203.0.113.8")));
        assert_ne!(a, caller_key(Some("other"), Some("203.0.113.7")));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            caller_key(Some("ab"), Some("c")),
            caller_key(Some("a"), Some("bc"))
        );
        assert!(!a.contains("203"));
    }
}
