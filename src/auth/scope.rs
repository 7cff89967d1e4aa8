//! OAuth 2.0 scopes: what a token allows.

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read messages and comments (the fetch endpoint).
    MessagesRead,
    /// Post messages and comments.
    MessagesWrite,
    /// Create and manage one's own webhook subscriptions.
    SubscriptionsManage,
    /// Read the event feed.
    EventsRead,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Self::MessagesRead,
        Self::MessagesWrite,
        Self::SubscriptionsManage,
        Self::EventsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessagesRead => "messages:read",
            Self::MessagesWrite => "messages:write",
            Self::SubscriptionsManage => "subscriptions:manage",
            Self::EventsRead => "events:read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope `{0}`; known scopes: messages:read messages:write subscriptions:manage events:read"
)]
pub struct UnknownScope(String);

/// A set of scopes, written as the space-separated list of RFC 6749 §3.3.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    pub fn all() -> Self {
        Self(Scope::ALL.into_iter().collect())
    }

    /// Parses a space-separated list; unknown names are an error, not ignored.
    pub fn parse(list: &str) -> Result<Self, UnknownScope> {
        list.split([' ', ','])
            .filter(|name| !name.is_empty())
            .map(|name| {
                Scope::ALL
                    .into_iter()
                    .find(|scope| scope.as_str() == name)
                    .ok_or_else(|| UnknownScope(name.chars().take(64).collect()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn is_subset(&self, other: &Scopes) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Self(scopes.into_iter().collect())
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_in_a_stable_order() {
        let scopes = Scopes::parse("messages:write  messages:read").unwrap();
        assert_eq!(scopes.to_string(), "messages:read messages:write");
        assert_eq!(Scopes::parse(&Scopes::all().to_string()), Ok(Scopes::all()));
    }

    #[test]
    fn unknown_scopes_are_refused() {
        assert!(Scopes::parse("messages:read admin").is_err());
        assert!(Scopes::parse("MESSAGES:READ").is_err());
    }

    #[test]
    fn subset_and_contains() {
        let read = Scopes::parse("messages:read").unwrap();
        assert!(read.is_subset(&Scopes::all()));
        assert!(!Scopes::all().is_subset(&read));
        assert!(read.contains(Scope::MessagesRead));
        assert!(!read.contains(Scope::MessagesWrite));
        assert!(Scopes::parse("").unwrap().is_empty());
    }
}
