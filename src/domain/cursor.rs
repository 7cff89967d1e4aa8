//! Opaque page cursors.
//!
//! A cursor names the last item of a page. It is opaque to clients (base64url
//! of a versioned string) so its inside can change without breaking them, and
//! it is decoded strictly: anything the server did not make is rejected.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const VERSION: &str = "v1";
/// Longer input cannot be a cursor this server made; refuse before decoding.
const MAX_ENCODED_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`after` is not a valid cursor; pass the `next_cursor` of a previous page")]
pub struct InvalidCursor;

/// A position in an ordered listing: the key of the last item already seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn after(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn key(&self) -> &str {
        &self.0
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{VERSION}:{}", self.0))
    }

    pub fn decode(encoded: &str) -> Result<Self, InvalidCursor> {
        if encoded.is_empty() || encoded.len() > MAX_ENCODED_LEN {
            return Err(InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| InvalidCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| InvalidCursor)?;
        match text.split_once(':') {
            Some((VERSION, key)) if !key.is_empty() => Ok(Self(key.to_owned())),
            _ => Err(InvalidCursor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let cursor = Cursor::after("cmt_01jd5x8w3k2m4n6p7q9r0s1t2v");
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn encoded_cursor_is_url_safe() {
        let encoded = Cursor::after("a?b/c+d=e").encode();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{encoded}"
        );
    }

    #[test]
    fn decode_rejects_what_the_server_did_not_make() {
        let too_long = "A".repeat(MAX_ENCODED_LEN + 1);
        for bad in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("v2:cmt_x"),
            &URL_SAFE_NO_PAD.encode("v1:"),
            &URL_SAFE_NO_PAD.encode("no separator"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            &too_long,
        ] {
            assert_eq!(Cursor::decode(bad), Err(InvalidCursor), "accepted {bad:?}");
        }
    }
}
