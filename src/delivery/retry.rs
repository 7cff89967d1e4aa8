//! When to try a failed delivery again.

use std::time::Duration;

/// What one attempt's answer means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 410 Gone: the receiver wants no more; the subscription is disabled.
    Gone,
    /// 429 or 503 with a `Retry-After` the receiver asked us to respect.
    RetryAfter(Duration),
    /// Any other status, a timeout, a connection error, a blocked address.
    Failed,
}

pub fn classify(status: Option<u16>, retry_after: Option<Duration>) -> Outcome {
    match status {
        Some(200..=299) => Outcome::Delivered,
        Some(410) => Outcome::Gone,
        Some(429 | 503) => retry_after.map_or(Outcome::Failed, Outcome::RetryAfter),
        _ => Outcome::Failed,
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// The retry schedule: `delays[n]` is the wait before attempt `n + 1`
/// (so `delays[0]` is the first attempt's, normally 0). After the last, dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub delays: Vec<Duration>,
    /// The longest `Retry-After` honoured; longer requests are cut to this.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// When to try again after `attempts_made` attempts, or `None` when the
    /// schedule is spent. `jitter` in [0, 1) spreads retries ±20% so that
    /// failures that happened together do not retry together.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        outcome: Outcome,
        jitter: f64,
    ) -> Option<Duration> {
        let scheduled = *self.delays.get(usize::try_from(attempts_made).ok()?)?;
        if let Outcome::RetryAfter(asked) = outcome {
            return Some(asked.min(self.max_retry_after));
        }
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        Some(scheduled.mul_f64(factor))
    }
}

/// A uniform random number in [0, 1).
pub fn random_jitter() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system random source is available");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            delays: [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
                .map(Duration::from_secs)
                .to_vec(),
            max_retry_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(Some(200), None), Outcome::Delivered);
        assert_eq!(classify(Some(204), None), Outcome::Delivered);
        assert_eq!(classify(Some(410), None), Outcome::Gone);
        assert_eq!(classify(Some(301), None), Outcome::Failed);
        assert_eq!(classify(Some(500), None), Outcome::Failed);
        assert_eq!(classify(Some(429), None), Outcome::Failed);
        assert_eq!(
            classify(Some(503), Some(Duration::from_secs(7))),
            Outcome::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(classify(None, None), Outcome::Failed);
    }

    #[test]
    fn the_schedule_is_followed_with_jitter_then_ends() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, Outcome::Failed, 0.5),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.next_delay(1, Outcome::Failed, 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            p.next_delay(2, Outcome::Failed, 0.5),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            p.next_delay(7, Outcome::Failed, 0.5),
            Some(Duration::from_secs(36000))
        );
        assert_eq!(p.next_delay(8, Outcome::Failed, 0.5), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_bound() {
        let p = policy();
        let asked = |s| Outcome::RetryAfter(Duration::from_secs(s));
        assert_eq!(
            p.next_delay(1, asked(120), 0.9),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            p.next_delay(1, asked(86_400), 0.9),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(p.next_delay(8, asked(1), 0.9), None);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = time::macros::datetime!(2026-11-28 10:00:00 UTC);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
