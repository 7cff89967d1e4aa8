//! The time as the database stores it.

use time::{OffsetDateTime, PrimitiveDateTime};

/// Now, in UTC, truncated to microseconds: the precision both backends keep,
/// so a value reads back exactly as it was written.
pub fn now() -> PrimitiveDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.microsecond();
    let now = now
        .replace_microsecond(micros)
        .expect("a microsecond read from a valid time is in range");
    PrimitiveDateTime::new(now.date(), now.time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_has_no_sub_microsecond_part() {
        assert_eq!(now().nanosecond() % 1_000, 0);
    }
}
