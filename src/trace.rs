//! W3C Trace Context (`traceparent`): the request that creates an event
//! passes its trace on to every webhook attempt of that event, so a
//! receiver's traces join the sender's.

use std::fmt;

use actix_web::HttpRequest;
use actix_web::http::header::HeaderMap;

/// The `traceparent` header: `00-{trace id}-{parent id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The request's trace context, or a new trace when it has none or an
    /// invalid one (the specification says to restart the trace, not to
    /// refuse the request).
    pub fn of_request(req: &HttpRequest) -> Self {
        // Exported, the request's own span is the parent (it continues the
        // caller's trace: see the request id middleware).
        #[cfg(feature = "otlp")]
        if let Some(own) = crate::otlp::context_of(&tracing::Span::current()) {
            return own;
        }
        Self::of_headers(req.headers()).unwrap_or_else(Self::new_trace)
    }

    /// The valid `traceparent` among `headers`, if any.
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }

    /// A `traceparent` value per the W3C recommendation: version `00`
    /// exactly; a later version is read for its first four fields (it may
    /// only append); `ff` and all-zero ids are invalid; hex is lowercase.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        let version = u8::from_str_radix(value.get(0..2)?, 16).ok()?;
        let well_sized = match version {
            0 => value.len() == 55,
            0xff => false,
            _ => value.len() == 55 || value.as_bytes().get(55) == Some(&b'-'),
        };
        if !well_sized || !value.get(0..2)?.bytes().all(is_lower_hex) {
            return None;
        }
        let mut fields = value[..55].split('-').skip(1);
        let (trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let parsed = Self {
            trace_id: decode(trace)?,
            parent_id: decode(parent)?,
            flags: decode::<1>(flags)?[0],
        };
        let valid = parsed.trace_id != [0; 16] && parsed.parent_id != [0; 8];
        valid.then_some(parsed)
    }

    /// A new trace, sampled (nothing downstream knows better).
    pub fn new_trace() -> Self {
        Self {
            trace_id: random_nonzero(),
            parent_id: random_nonzero(),
            flags: 0x01,
        }
    }

    /// The context a request made as part of this trace carries: the same
    /// trace and flags, a new span of its own as the parent.
    pub fn child(&self) -> Self {
        Self {
            parent_id: random_nonzero(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(is_lower_hex) {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Random ids from a per-thread generator seeded by the operating system
/// once: every event and attempt needs one, and a system call each would
/// cost more than the rest of the id's handling. Ids need to be unique and
/// unpredictable enough for sampling, not secret.
fn random_nonzero<const N: usize>() -> [u8; N] {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut seed = [0; 8];
            getrandom::fill(&mut seed).expect("the operating system's random source works");
            u64::from_le_bytes(seed)
        });
    }
    let mut bytes = [0; N];
    while bytes == [0; N] {
        for chunk in bytes.chunks_mut(8) {
            let word = STATE.with(splitmix64).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    bytes
}

/// SplitMix64: a full-period generator whose outputs pass statistical tests.
fn splitmix64(state: &std::cell::Cell<u64>) -> u64 {
    let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.set(next);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_values_are_refused() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let parsed = TraceParent::parse(later).expect("valid");
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_parent() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
    }
}
