//! User-written text: message and comment bodies.

use std::fmt;

/// The longest text accepted, in characters (not bytes).
pub const MAX_TEXT_CHARS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidText {
    #[error("must not be empty or only whitespace")]
    Empty,
    #[error("must be at most {MAX_TEXT_CHARS} characters, got {0}")]
    TooLong(usize),
    #[error("must not contain control characters other than tab and newline")]
    ControlCharacter,
}

/// The body of a message or a comment: non-blank, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(value: String) -> Result<Self, InvalidText> {
        if value.trim().is_empty() {
            return Err(InvalidText::Empty);
        }
        let chars = value.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(InvalidText::TooLong(chars));
        }
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(InvalidText::ControlCharacter);
        }
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
            Err(InvalidText::TooLong(MAX_TEXT_CHARS + 1))
        );
    }

    #[test]
    fn rejects_control_characters() {
        assert_eq!(
            Text::parse("nul\u{0}byte".into()),
            Err(InvalidText::ControlCharacter)
        );
    }
}
