//! The thin webhook body: what happened and where to read it, never the
//! resource itself.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::db::models::EventRow;

#[derive(Debug, Serialize)]
pub struct ThinEvent<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    pub timestamp: String,
    pub data: EventData<'a>,
}

#[derive(Debug, Serialize)]
pub struct EventData<'a> {
    pub resource: Resource<'a>,
    /// Absent on a test event, which is about no message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    /// Position among the message's events: a receiver can drop a stale one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
}

/// The type of the event `POST /subscriptions/{id}/test` sends.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

#[derive(Debug, Serialize)]
pub struct Resource<'a> {
    #[serde(rename = "type")]
    pub resource_type: &'a str,
    pub id: &'a str,
    pub url: String,
}

impl<'a> ThinEvent<'a> {
    pub fn new(event: &'a EventRow, public_base_url: &str) -> Self {
        Self {
            id: &event.id,
            event_type: &event.event_type,
            timestamp: rfc3339(event),
            data: EventData::new(event, public_base_url),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a thin event serialises")
    }
}

impl<'a> EventData<'a> {
    fn new(event: &'a EventRow, public_base_url: &str) -> Self {
        Self {
            resource: Resource {
                resource_type: &event.resource_type,
                id: &event.resource_id,
                url: format!("{public_base_url}{}", event.resource_path),
            },
            message_id: (!event.message_id.is_empty()).then_some(event.message_id.as_str()),
            sequence: (!event.message_id.is_empty()).then_some(event.sequence),
        }
    }
}

fn rfc3339(event: &EventRow) -> String {
    event
        .created_at
        .assume_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The same thin event as a CloudEvent 1.0: `id` is the event id, `source`
/// the gateway's public base URL, `type` the event type under the
/// `com.thinhook.` prefix, `subject` the resource's path, and `data` the
/// thin event's `data`.
#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    pub specversion: &'static str,
    pub id: &'a str,
    pub source: &'a str,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: String,
    pub subject: &'a str,
    pub datacontenttype: &'static str,
    pub data: EventData<'a>,
}

/// The CloudEvents `type` of an event type: reverse-DNS prefixed, as the
/// CloudEvents specification recommends.
pub fn cloudevents_type(event_type: &str) -> String {
    format!("com.thinhook.{event_type}")
}

impl<'a> CloudEvent<'a> {
    pub fn new(event: &'a EventRow, public_base_url: &'a str) -> Self {
        Self {
            specversion: "1.0",
            id: &event.id,
            source: public_base_url,
            event_type: cloudevents_type(&event.event_type),
            time: rfc3339(event),
            subject: &event.resource_path,
            datacontenttype: "application/json",
            data: EventData::new(event, public_base_url),
        }
    }

    /// Structured mode: the whole event, `application/cloudevents+json`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a CloudEvent serialises")
    }

    /// Binary mode: the attributes as `ce-` headers (values encoded as the
    /// HTTP binding says), and the data alone as the `application/json` body.
    pub fn to_binary(&self) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let headers = vec![
            ("ce-specversion", self.specversion.to_owned()),
            ("ce-id", header_value(self.id)),
            ("ce-source", header_value(self.source)),
            ("ce-type", header_value(&self.event_type)),
            ("ce-time", header_value(&self.time)),
            ("ce-subject", header_value(self.subject)),
        ];
        let body = serde_json::to_vec(&self.data).expect("a thin event serialises");
        (headers, body)
    }
}

/// A `ce-` header value: printable ASCII but space, `"` and `%`, which are
/// percent-encoded with everything else (UTF-8 bytes).
fn header_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..0x7f).contains(&byte) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventRow {
        EventRow {
            id: "evt_1".into(),
            event_type: "comment.created".into(),
            resource_type: "comment".into(),
            resource_id: "cmt_1".into(),
            resource_path: "/messages/msg_1/comments/cmt_1".into(),
            message_id: "msg_1".into(),
            sequence: 3,
            created_at: time::macros::datetime!(2026-11-28 10:00:00),
            feed_position: Some(7),
            traceparent: None,
            workspace_id: "wsp_00000000000000000000000000".into(),
        }
    }

    #[test]
    fn the_body_links_to_the_resource_and_carries_nothing_else() {
        let event = event();
        let body: serde_json::Value =
            serde_json::from_slice(&ThinEvent::new(&event, "https://gw.example").to_json())
                .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "evt_1",
                "type": "comment.created",
                "timestamp": "2026-11-28T10:00:00Z",
                "data": {
                    "resource": {
                        "type": "comment",
                        "id": "cmt_1",
                        "url": "https://gw.example/messages/msg_1/comments/cmt_1"
                    },
                    "message_id": "msg_1",
                    "sequence": 3
                }
            })
        );
    }

    #[test]
    fn a_cloudevent_carries_the_same_link_with_its_attributes() {
        let event = event();
        let cloudevent = CloudEvent::new(&event, "https://gw.example");
        let body: serde_json::Value = serde_json::from_slice(&cloudevent.to_json()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "specversion": "1.0",
                "id": "evt_1",
                "source": "https://gw.example",
                "type": "com.thinhook.comment.created",
                "time": "2026-11-28T10:00:00Z",
                "subject": "/messages/msg_1/comments/cmt_1",
                "datacontenttype": "application/json",
                "data": {
                    "resource": {
                        "type": "comment",
                        "id": "cmt_1",
                        "url": "https://gw.example/messages/msg_1/comments/cmt_1"
                    },
                    "message_id": "msg_1",
                    "sequence": 3
                }
            })
        );
        let (headers, data) = cloudevent.to_binary();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&data).unwrap(),
            body["data"]
        );
        assert!(headers.contains(&("ce-type", "com.thinhook.comment.created".to_owned())));
        assert!(headers.contains(&("ce-source", "https://gw.example".to_owned())));
    }

    #[test]
    fn binary_header_values_are_percent_encoded_where_the_binding_says() {
        assert_eq!(header_value("https://gw.example/a"), "https://gw.example/a");
        assert_eq!(header_value("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(header_value("é"), "%C3%A9");
    }
}
