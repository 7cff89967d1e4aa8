//! Domain types: values that are valid by construction (parse, don't validate).

pub mod cursor;
pub mod event_type;
pub mod idempotency_key;
pub mod ids;
pub mod page;
pub mod signing_secret;
pub mod text;
pub mod webhook_url;

pub use cursor::Cursor;
pub use event_type::{EventType, EventTypes};
pub use idempotency_key::IdempotencyKey;
pub use ids::{
    ClientId, CommentId, DeliveryId, EventId, MessageId, RequestId, SubscriptionId, TokenId,
    WorkspaceId,
};
pub use page::PageLimit;
pub use signing_secret::SigningSecret;
pub use text::{Description, Text};
pub use webhook_url::WebhookUrl;
