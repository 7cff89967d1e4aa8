//! The kinds of event a subscription can ask for.

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    MessageCreated,
    CommentCreated,
}

impl EventType {
    pub const ALL: [EventType; 2] = [Self::MessageCreated, Self::CommentCreated];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageCreated => "message.created",
            Self::CommentCreated => "comment.created",
        }
    }

    pub fn parse(name: &str) -> Result<Self, UnknownEventType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| UnknownEventType(name.chars().take(64).collect()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`; known types: message.created, comment.created")]
pub struct UnknownEventType(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventTypes {
    #[error(transparent)]
    Unknown(#[from] UnknownEventType),
    #[error("must name at least one event type")]
    Empty,
}

/// A non-empty set of event types.
///
/// Stored as ` a b ` (space-separated, with a space at each end) so that
/// "does this subscription want type T" is `LIKE '% T %'` on both backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(BTreeSet<EventType>);

impl EventTypes {
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidEventTypes> {
        let set = names
            .into_iter()
            .map(EventType::parse)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if set.is_empty() {
            return Err(InvalidEventTypes::Empty);
        }
        Ok(Self(set))
    }

    pub fn one(event_type: EventType) -> Self {
        Self(BTreeSet::from([event_type]))
    }

    pub fn contains(&self, event_type: EventType) -> bool {
        self.0.contains(&event_type)
    }

    pub fn iter(&self) -> impl Iterator<Item = EventType> + '_ {
        self.0.iter().copied()
    }

    pub fn to_stored(&self) -> String {
        let mut stored = String::from(" ");
        for t in &self.0 {
            stored.push_str(t.as_str());
            stored.push(' ');
        }
        stored
    }

    pub fn from_stored(stored: &str) -> Result<Self, InvalidEventTypes> {
        Self::parse(stored.split_whitespace())
    }

    /// The `LIKE` pattern that matches a stored set containing `event_type`.
    pub fn stored_pattern(event_type: EventType) -> String {
        format!("% {} %", event_type.as_str())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_through_storage() {
        let types = EventTypes::parse(["comment.created", "message.created"]).unwrap();
        assert_eq!(types.to_stored(), " message.created comment.created ");
        assert_eq!(EventTypes::from_stored(&types.to_stored()), Ok(types));
    }

    #[test]
    fn unknown_or_no_event_types_are_refused() {
        assert!(matches!(
            EventTypes::parse(["comment.deleted"]),
            Err(InvalidEventTypes::Unknown(_))
        ));
        assert_eq!(EventTypes::parse([]), Err(InvalidEventTypes::Empty));
    }

    #[test]
    fn the_stored_pattern_matches_whole_names_only() {
        let pattern = EventTypes::stored_pattern(EventType::CommentCreated);
        assert_eq!(pattern, "% comment.created %");
    }
}
