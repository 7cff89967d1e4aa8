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
    pub message_id: &'a str,
    /// Position among the message's events: a receiver can drop a stale one.
    pub sequence: i64,
}

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
            timestamp: event
                .created_at
                .assume_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            data: EventData {
                resource: Resource {
                    resource_type: &event.resource_type,
                    id: &event.resource_id,
                    url: format!("{public_base_url}{}", event.resource_path),
                },
                message_id: &event.message_id,
                sequence: event.sequence,
            },
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a thin event serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_links_to_the_resource_and_carries_nothing_else() {
        let event = EventRow {
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
        };
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
}
