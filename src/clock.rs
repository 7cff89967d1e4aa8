//! Time, injectable: the server reads it through a [`Clock`] so tests can
//! move it (token expiry, retry schedules, leases) without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::{OffsetDateTime, PrimitiveDateTime};

pub trait Clock: Send + Sync + fmt::Debug {
    fn now_utc(&self) -> OffsetDateTime;
}

/// The shared handle the application passes around.
pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now_utc(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// `time` as the database stores it: UTC without offset, truncated to
/// microseconds (the precision both backends keep), so a value reads back
/// exactly as written.
pub fn to_db(time: OffsetDateTime) -> PrimitiveDateTime {
    let utc = time.to_offset(time::UtcOffset::UTC);
    let truncated = utc
        .replace_microsecond(utc.microsecond())
        .expect("a microsecond read from a valid time is in range");
    PrimitiveDateTime::new(truncated.date(), truncated.time())
}

/// What a `since` must be, for error messages (the API's and the CLI's).
pub const SINCE_FORMAT: &str = "must be an RFC 3339 time, e.g. 2026-11-29T12:00:00Z";

/// A `since` filter (`GET /deliveries`, replays, `thinhook deliveries`):
/// an RFC 3339 time, as the database stores it.
pub fn parse_since(since: &str) -> Option<PrimitiveDateTime> {
    OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(to_db)
}

/// Now, as the database stores it.
pub fn db_now(clock: &dyn Clock) -> PrimitiveDateTime {
    to_db(clock.now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_time_has_no_sub_microsecond_part() {
        assert_eq!(db_now(&SystemClock).nanosecond() % 1_000, 0);
    }

    #[test]
    fn db_time_is_utc() {
        let local = time::macros::datetime!(2026-11-28 12:00 +02:00);
        assert_eq!(to_db(local), time::macros::datetime!(2026-11-28 10:00));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = time::macros::datetime!(2026-11-28 10:00 UTC);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now_utc(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_utc(), start + Duration::from_secs(90));
    }
}
