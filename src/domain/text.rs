//! User-written text: message and comment bodies, subscription descriptions.
//!
//! Every text a client can store passes one rule: no control characters but
//! tab, newline and carriage return. NUL in particular: PostgreSQL refuses it
//! in `TEXT` outright (a failed insert, so a 500), and SQLite would store it
//! and hand it to every reader. Refusing it here, where the value is parsed,
//! gives the same 422 on both backends.

use std::fmt;

/// The longest text accepted, in characters (not bytes).
pub const MAX_TEXT_CHARS: usize = 10_000;

/// The longest subscription description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidText {
    #[error("must not be empty or only whitespace")]
    Empty,
    #[error("must be at most {max} characters, got {got}")]
    TooLong { max: usize, got: usize },
    #[error("must not contain control characters other than tab and newline")]
    ControlCharacter,
}

/// Whether `value` holds a character no stored text may hold.
fn has_forbidden_control(value: &str) -> bool {
    value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
}

/// Checks the length and the characters shared by every stored text.
fn check(value: &str, max: usize) -> Result<(), InvalidText> {
    let chars = value.chars().count();
    if chars > max {
        return Err(InvalidText::TooLong { max, got: chars });
    }
    if has_forbidden_control(value) {
        return Err(InvalidText::ControlCharacter);
    }
    Ok(())
}

/// The body of a message or a comment: non-blank, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(value: String) -> Result<Self, InvalidText> {
        if value.trim().is_empty() {
            return Err(InvalidText::Empty);
        }
        check(&value, MAX_TEXT_CHARS)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription's note to its owner: bounded and printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    /// A blank description is no description (`None`), as it always was.
    pub fn parse(value: String) -> Result<Option<Self>, InvalidText> {
        check(&value, MAX_DESCRIPTION_CHARS)?;
        Ok((!value.trim().is_empty()).then_some(Self(value)))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_text() {
        let text = Text::parse("Hello,\n\tworld — ünïcödé 👋".into()).unwrap();
        assert_eq!(text.as_str(), "Hello,\n\tworld — ünïcödé 👋");
    }

    #[test]
    fn rejects_blank_text() {
        assert_eq!(Text::parse(String::new()), Err(InvalidText::Empty));
        assert_eq!(Text::parse(" \n\t ".into()), Err(InvalidText::Empty));
    }

    #[test]
    fn length_is_counted_in_characters() {
        assert!(Text::parse("é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(
            Text::parse("é".repeat(MAX_TEXT_CHARS + 1)),
            Err(InvalidText::TooLong {
                max: MAX_TEXT_CHARS,
                got: MAX_TEXT_CHARS + 1
            })
        );
    }

    #[test]
    fn rejects_control_characters() {
        for bad in [
            "nul\u{0}byte",
            "\u{0}",
            "bell\u{7}",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            assert_eq!(
                Text::parse(bad.into()),
                Err(InvalidText::ControlCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn descriptions_follow_the_same_character_rule() {
        assert_eq!(
            Description::parse("ci\u{0}".into()),
            Err(InvalidText::ControlCharacter)
        );
        // A lone NUL is not blank: it is refused, not dropped.
        assert_eq!(
            Description::parse("\u{0}".into()),
            Err(InvalidText::ControlCharacter)
        );
        assert_eq!(
            Description::parse("line\nbreak".into()).map(|d| d.map(Description::into_string)),
            Ok(Some("line\nbreak".to_owned()))
        );
    }

    #[test]
    fn a_blank_description_is_none_and_a_long_one_is_refused() {
        assert_eq!(Description::parse("  ".into()), Ok(None));
        assert!(Description::parse("é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        assert_eq!(
            Description::parse("é".repeat(MAX_DESCRIPTION_CHARS + 1)),
            Err(InvalidText::TooLong {
                max: MAX_DESCRIPTION_CHARS,
                got: MAX_DESCRIPTION_CHARS + 1
            })
        );
    }
}
