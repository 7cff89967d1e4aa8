//! The value of an `Idempotency-Key` request header.
//!
//! The IETF httpapi draft makes it a Structured Field string (RFC 8941
//! `sf-string`: in double quotes, `\"` and `\\` the only escapes). Clients
//! and libraries often send the bare value instead (`Idempotency-Key:
//! 8e03978e-…`), so that is accepted too; `"abc"` and `abc` are the same
//! key. Either way the key is 1 to [`MAX_KEY_LEN`] printable ASCII
//! characters.

use std::fmt;

/// The longest key accepted, in characters (after unquoting).
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdempotencyKey {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_KEY_LEN} characters, got {0}")]
    TooLong(usize),
    #[error(
        "must be printable ASCII: a quoted string (\"…\") of characters from space to `~`, \
         or a bare value without spaces"
    )]
    NotPrintable,
    #[error("has a `\\` that escapes neither `\"` nor `\\`")]
    BadEscape,
    #[error("has no closing `\"`")]
    Unterminated,
    #[error("must end at its closing `\"` (parameters are not accepted)")]
    TrailingCharacters,
    #[error("must be given once")]
    Repeated,
}

/// A key, unquoted: 1 to 255 characters from space to `~`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value: an `sf-string` or a bare value.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidIdempotencyKey> {
        let value = value.trim_ascii();
        let key = match value.split_first() {
            Some((b'"', quoted)) => unquote(quoted)?,
            _ if value.iter().all(|b| b.is_ascii_graphic()) => value.to_vec(),
            _ => return Err(InvalidIdempotencyKey::NotPrintable),
        };
        match key.len() {
            0 => Err(InvalidIdempotencyKey::Empty),
            len if len > MAX_KEY_LEN => Err(InvalidIdempotencyKey::TooLong(len)),
            // Printable ASCII only, so valid UTF-8.
            _ => String::from_utf8(key)
                .map(Self)
                .map_err(|_| InvalidIdempotencyKey::NotPrintable),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The characters of an `sf-string` after its opening quote, which must
/// end with the closing one.
fn unquote(quoted: &[u8]) -> Result<Vec<u8>, InvalidIdempotencyKey> {
    let mut key = Vec::with_capacity(quoted.len());
    let mut bytes = quoted.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'"' if bytes.as_slice().is_empty() => return Ok(key),
            b'"' => return Err(InvalidIdempotencyKey::TrailingCharacters),
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                Some(_) => return Err(InvalidIdempotencyKey::BadEscape),
                None => return Err(InvalidIdempotencyKey::Unterminated),
            },
            b' '..=b'~' => key.push(byte),
            _ => return Err(InvalidIdempotencyKey::NotPrintable),
        }
    }
    Err(InvalidIdempotencyKey::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<String, InvalidIdempotencyKey> {
        IdempotencyKey::parse(value.as_bytes()).map(|key| key.as_str().to_owned())
    }

    #[test]
    fn a_quoted_key_and_the_same_key_bare_are_one_key() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(&format!("\"{uuid}\"")).unwrap(), uuid);
        assert_eq!(parse(uuid).unwrap(), uuid);
        assert_eq!(parse("  \"a\"  ").unwrap(), "a");
    }

    #[test]
    fn a_quoted_key_keeps_its_spaces_and_unescapes_quotes_and_backslashes() {
        assert_eq!(parse(r#""order 42""#).unwrap(), "order 42");
        assert_eq!(
            parse(r#""say \"hi\" \\ bye""#).unwrap(),
            r#"say "hi" \ bye"#
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let cases = [
            ("", InvalidIdempotencyKey::Empty),
            ("\"\"", InvalidIdempotencyKey::Empty),
            ("\"abc", InvalidIdempotencyKey::Unterminated),
            ("\"abc\\", InvalidIdempotencyKey::Unterminated),
            ("\"a\\nb\"", InvalidIdempotencyKey::BadEscape),
            (
                "\"abc\";expires=1",
                InvalidIdempotencyKey::TrailingCharacters,
            ),
            ("\"a\"b\"", InvalidIdempotencyKey::TrailingCharacters),
            ("two words", InvalidIdempotencyKey::NotPrintable),
            ("caf\u{e9}", InvalidIdempotencyKey::NotPrintable),
            ("\"caf\u{e9}\"", InvalidIdempotencyKey::NotPrintable),
            ("\"tab\there\"", InvalidIdempotencyKey::NotPrintable),
        ];
        for (value, expected) in cases {
            assert_eq!(parse(value), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn a_key_may_have_255_characters_and_no_more() {
        assert_eq!(parse(&"k".repeat(255)).unwrap().len(), 255);
        assert_eq!(
            parse(&"k".repeat(256)),
            Err(InvalidIdempotencyKey::TooLong(256))
        );
        let quoted = format!("\"{}\"", "\\\"".repeat(255));
        assert_eq!(parse(&quoted).unwrap(), "\"".repeat(255));
        let quoted = format!("\"{}\"", "k".repeat(256));
        assert_eq!(parse(&quoted), Err(InvalidIdempotencyKey::TooLong(256)));
    }
}
