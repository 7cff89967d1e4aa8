//! Page sizes for cursor-paginated listings.

/// How many items a page holds: 1 to [`PageLimit::MAX`], [`PageLimit::DEFAULT`] when unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`limit` must be between 1 and {max}, got {0}", max = PageLimit::MAX)]
pub struct InvalidPageLimit(u64);

impl PageLimit {
    pub const DEFAULT: u16 = 20;
    pub const MAX: u16 = 100;

    pub fn parse(limit: Option<u64>) -> Result<Self, InvalidPageLimit> {
        match limit {
            None => Ok(Self(Self::DEFAULT)),
            Some(n) if (1..=u64::from(Self::MAX)).contains(&n) => Ok(Self(n as u16)),
            Some(n) => Err(InvalidPageLimit(n)),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(PageLimit::parse(None).unwrap().get(), PageLimit::DEFAULT);
        assert_eq!(PageLimit::parse(Some(1)).unwrap().get(), 1);
        assert_eq!(PageLimit::parse(Some(100)).unwrap().get(), 100);
        for bad in [0, 101, 100_000, u64::MAX] {
            assert_eq!(PageLimit::parse(Some(bad)), Err(InvalidPageLimit(bad)));
        }
    }
}
