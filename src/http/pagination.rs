//! Cursor pages: `?limit=&after=` in, `{data, next_cursor, has_more}` out.

use serde::{Deserialize, Serialize};

use crate::domain::PageLimit;
use crate::domain::cursor::Cursor;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub limit: Option<u64>,
    pub after: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<PageLimit, ApiError> {
        PageLimit::parse(self.limit).map_err(|e| ApiError::InvalidRequest(e.to_string()))
    }

    /// The key after which the page starts, parsed by the listing's own id type.
    pub fn after<K, E: std::fmt::Display>(
        &self,
        parse: impl FnOnce(&str) -> Result<K, E>,
    ) -> Result<Option<K>, ApiError> {
        let Some(encoded) = &self.after else {
            return Ok(None);
        };
        let invalid = |e: &dyn std::fmt::Display| ApiError::InvalidRequest(e.to_string());
        let cursor = Cursor::decode(encoded).map_err(|e| invalid(&e))?;
        parse(cursor.key())
            .map(Some)
            .map_err(|_| invalid(&crate::domain::cursor::InvalidCursor))
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only tells
    /// whether more follow. The cursor points after the last row, or stays
    /// where it was on an empty page, so a client can always resume from it.
    pub fn from_rows(
        mut rows: Vec<T>,
        limit: PageLimit,
        params: &PageParams,
        key: impl Fn(&T) -> String,
    ) -> Self {
        let has_more = rows.len() > usize::from(limit.get());
        rows.truncate(usize::from(limit.get()));
        let next_cursor = match rows.last() {
            Some(last) => Some(Cursor::after(key(last)).encode()),
            None => params.after.clone(),
        };
        Self {
            data: rows,
            next_cursor,
            has_more,
        }
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
            has_more: self.has_more,
        }
    }
}
