//! Domain types: values that are valid by construction (parse, don't validate).

pub mod cursor;
pub mod ids;
pub mod page;
pub mod text;
pub mod webhook_url;

pub use cursor::Cursor;
pub use ids::{ClientId, CommentId, MessageId, RequestId, TokenId};
pub use page::PageLimit;
pub use text::Text;
pub use webhook_url::WebhookUrl;
