//! Typed, prefixed, time-ordered identifiers such as `msg_01jd5x…`.
//!
//! An id is a prefix naming the resource, an underscore, and 26 characters of
//! Crockford base32 (lower case) holding a 48-bit millisecond timestamp and 80
//! random bits, ULID-style. Ids made by one process are strictly increasing,
//! so sorting by id sorts by creation time, which the cursor pages rely on.

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const BODY_LEN: usize = 26;
const RANDOM_BITS: u32 = 80;

/// Why a string is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not a valid {kind} id: expected `{prefix}_` followed by 26 base32 characters"
)]
pub struct InvalidId {
    kind: &'static str,
    prefix: &'static str,
    value: String,
}

/// The last value handed out, so ids stay strictly increasing within a
/// millisecond and when the wall clock steps backwards.
static LAST: Mutex<u128> = Mutex::new(0);

/// A new 128-bit ULID value: `ms << 80 | random`, greater than every earlier one.
fn next_value() -> u128 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        & ((1 << 48) - 1);
    let mut random = [0u8; 16];
    getrandom::fill(&mut random[6..]).expect("the operating system random source is available");
    let candidate = (now_ms << RANDOM_BITS) | u128::from_be_bytes(random);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *last = if candidate > *last {
        candidate
    } else {
        *last + 1
    };
    *last
}

fn encode(value: u128) -> String {
    (0..BODY_LEN)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

fn is_valid_body(body: &str) -> bool {
    body.len() == BODY_LEN
        // 26 × 5 = 130 bits: the first character carries only 3 bits.
        && body.as_bytes()[0] <= b'7'
        && body.bytes().all(|b| ALPHABET.contains(&b))
}

/// Declares an id newtype with its prefix. The inner string is private: an
/// id exists only if it was generated or parsed.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, encode(next_value())))
            }

            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                match value.strip_prefix(concat!($prefix, "_")) {
                    Some(body) if is_valid_body(body) => Ok(Self(value.to_owned())),
                    _ => Err(InvalidId { kind: $kind, prefix: $prefix, value: truncated(value) }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Error messages echo the input; keep them short whatever the client sent.
fn truncated(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

typed_id!(
    /// Identifies a message: `msg_…`.
    MessageId, "msg", "message"
);
typed_id!(
    /// Identifies a comment on a message: `cmt_…`.
    CommentId, "cmt", "comment"
);
typed_id!(
    /// Identifies an API client (the OAuth 2.0 `client_id`): `cli_…`.
    ClientId, "cli", "client"
);
typed_id!(
    /// Identifies one access token (its `jti`): `tok_…`.
    TokenId, "tok", "token"
);
typed_id!(
    /// Identifies a workspace, a tenant: `wsp_…`.
    WorkspaceId, "wsp", "workspace"
);

impl WorkspaceId {
    /// The workspace every client and resource made before workspaces
    /// existed belongs to, and new clients by default.
    pub const DEFAULT: &'static str = "wsp_00000000000000000000000000";

    pub fn default_workspace() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

typed_id!(
    /// Identifies a webhook subscription: `sub_…`.
    SubscriptionId, "sub", "subscription"
);
typed_id!(
    /// Identifies an event (also the `webhook-id` of its deliveries): `evt_…`.
    EventId, "evt", "event"
);
typed_id!(
    /// Identifies one event's delivery to one subscription: `dlv_…`.
    DeliveryId, "dlv", "delivery"
);
typed_id!(
    /// Identifies one HTTP request in logs and the `x-request-id` header: `req_…`.
    RequestId, "req", "request"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_fixed_length() {
        let id = MessageId::generate();
        assert!(id.as_str().starts_with("msg_"), "{id}");
        assert_eq!(id.as_str().len(), 4 + BODY_LEN);
    }

    #[test]
    fn generated_ids_round_trip_through_parse() {
        let id = CommentId::generate();
        assert_eq!(CommentId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn generated_ids_are_strictly_increasing() {
        let ids: Vec<_> = (0..10_000).map(|_| CommentId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let early = encode(1 << RANDOM_BITS | u128::from(u64::MAX));
        let late = encode(2 << RANDOM_BITS);
        assert!(early < late);
    }

    #[test]
    fn parse_rejects_malformed_ids() {
        let valid_body = "01jd5x8w3k2m4n6p7q9r0s1t2v";
        assert!(MessageId::parse(&format!("msg_{valid_body}")).is_ok());
        for bad in [
            "",
            "msg_",
            valid_body,
            &format!("cmt_{valid_body}"),
            &format!("msg_{}", &valid_body[1..]),
            &format!("msg_{valid_body}0"),
            &format!("msg_{}", valid_body.to_uppercase()),
            "msg_01jd5x8w3k2m4n6p7q9r0s1tiu", // i and u are not Crockford digits
            "msg_81jd5x8w3k2m4n6p7q9r0s1t2v", // overflows 128 bits
            "msg_01jd5x8w3k2m4n6p7q9r0s1t2\u{e9}",
        ] {
            assert!(MessageId::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parse_error_names_the_kind_and_truncates_long_input() {
        let err = CommentId::parse(&"x".repeat(10_000)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("comment id"), "{message}");
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        let id = MessageId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MessageId>("\"msg_nope\"").is_err());
    }
}
