//! Token buckets by key (a client id, a source address), in this process's
//! memory: a check costs a hash and a short lock, never a database round
//! trip. Each process limits on its own, so N API processes together admit
//! up to N times the rate.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept per shard before full ones are forgotten.
const SHARD_CAPACITY: usize = 4096;
const SHARDS: usize = 16;

/// `rate` tokens per second, up to `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub rate: f64,
    pub burst: u32,
}

impl Policy {
    /// The window the quota refills in, in whole seconds (the `w` of
    /// `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        (f64::from(self.burst) / self.rate).ceil().max(1.0) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` tokens are left, and the bucket is full again
    /// in `reset_secs`.
    Allowed { remaining: u32, reset_secs: u64 },
    /// Refused; a token is back in `retry_after_secs`.
    Limited { retry_after_secs: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    policy: Policy,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Bucket>>>,
}

impl RateLimiter {
    /// `None` when the rate is 0: no limit.
    pub fn new(policy: Policy) -> Option<Self> {
        (policy.rate > 0.0 && policy.burst > 0).then(|| Self {
            policy,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Buckets whose policy each check names (`check_with`): per-key limits.
    pub fn per_key() -> Self {
        Self {
            policy: Policy {
                rate: 1.0,
                burst: 1,
            },
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes a token from `key`'s bucket if it has one.
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        self.check_with(self.policy, key, now)
    }

    /// Takes a token from `key`'s bucket, refilled per `policy`, if it has one.
    pub fn check_with(&self, policy: Policy, key: &str, now: Instant) -> Decision {
        let Policy { rate, burst } = policy;
        let burst = f64::from(burst);
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SHARD_CAPACITY && !buckets.contains_key(key) {
            forget_full(&mut buckets, rate, burst, now);
        }
        let bucket = buckets.entry(key.into()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Allowed {
                remaining: bucket.tokens as u32,
                reset_secs: secs_ceil((burst - bucket.tokens) / rate),
            }
        } else {
            Decision::Limited {
                retry_after_secs: secs_ceil((1.0 - bucket.tokens) / rate).max(1),
            }
        }
    }
}

/// A full bucket is the same as none, so forgetting it loses nothing. If a
/// flood of keys leaves none full, the shard starts over rather than grow.
fn forget_full(buckets: &mut HashMap<Box<str>, Bucket>, rate: f64, burst: f64, now: Instant) {
    buckets
        .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    if buckets.len() >= SHARD_CAPACITY {
        buckets.clear();
    }
}

fn secs_ceil(secs: f64) -> u64 {
    secs.max(0.0).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(Policy { rate, burst }).unwrap()
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_tokens_come_back() {
        let limiter = limiter(2.0, 3);
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            assert!(matches!(
                limiter.check("a", t0),
                Decision::Allowed { remaining, .. } if remaining == left
            ));
        }
        assert_eq!(
            limiter.check("a", t0),
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // Other keys have buckets of their own.
        assert!(matches!(limiter.check("b", t0), Decision::Allowed { .. }));
        // 2 tokens per second: after half a second, one more.
        let later = t0 + Duration::from_millis(500);
        assert!(matches!(
            limiter.check("a", later),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(
            limiter.check("a", later),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn reset_counts_until_the_bucket_is_full_again() {
        let limiter = limiter(1.0, 10);
        let t0 = Instant::now();
        assert_eq!(
            limiter.check("a", t0),
            Decision::Allowed {
                remaining: 9,
                reset_secs: 1
            }
        );
        assert_eq!(limiter.policy().window_secs(), 10);
    }

    #[test]
    fn a_zero_rate_means_no_limiter() {
        assert!(
            RateLimiter::new(Policy {
                rate: 0.0,
                burst: 10
            })
            .is_none()
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let limiter = limiter(1.0, 5);
        let t0 = Instant::now();
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            limiter.check(&format!("key-{i}"), t0);
        }
        let kept: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARDS * SHARD_CAPACITY, "{kept}");
    }
}
