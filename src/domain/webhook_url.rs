//! The address a subscriber wants its webhooks sent to.

use std::fmt;

use url::Url;

/// Longer URLs are refused: nobody needs one, and they bloat every delivery row.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWebhookUrl {
    #[error("must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("is not an absolute URL: {0}")]
    Malformed(String),
    #[error("must use http or https, not `{0}`")]
    Scheme(String),
    #[error("must name a host")]
    NoHost,
    #[error("must not carry user name or password; put credentials in the path or query")]
    Credentials,
    #[error("must not have a fragment")]
    Fragment,
}

/// An absolute http(s) URL without credentials or fragment.
///
/// This is the syntactic check only; whether the host may be called at all
/// (the SSRF guard) is decided by the delivery client, at registration and
/// again at every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    pub fn parse(value: &str) -> Result<Self, InvalidWebhookUrl> {
        if value.len() > MAX_URL_LEN {
            return Err(InvalidWebhookUrl::TooLong);
        }
        // The URL parser would quietly drop tabs and newlines and
        // percent-encode NUL: a URL that needs either is refused as written,
        // so what is stored is what the client sent.
        if value.chars().any(char::is_control) {
            return Err(InvalidWebhookUrl::ControlCharacter);
        }
        let url = Url::parse(value).map_err(|e| InvalidWebhookUrl::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(InvalidWebhookUrl::Scheme(url.scheme().to_owned()));
        }
        if url.host().is_none() {
            return Err(InvalidWebhookUrl::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidWebhookUrl::Credentials);
        }
        if url.fragment().is_some() {
            return Err(InvalidWebhookUrl::Fragment);
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_urls() {
        for ok in [
            "https://example.com/hooks",
            "http://example.com:8080/a?b=c",
            "https://[2001:db8::1]/x",
        ] {
            assert!(WebhookUrl::parse(ok).is_ok(), "refused {ok}");
        }
    }

    #[test]
    fn refuses_other_urls_with_a_reason() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let cases = [
            ("example.com/hooks", "absolute"),
            ("ftp://example.com/", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("javascript:alert(1)", "http or https"),
            ("https://user:pw@example.com/", "user name"),
            ("https://example.com/#frag", "fragment"),
            ("http://", "absolute"),
            (long.as_str(), "at most"),
            ("https://example.com/a\u{0}b", "control characters"),
            ("https://exa\tmple.com/", "control characters"),
            ("https://example.com/?q=\n", "control characters"),
        ];
        for (bad, reason) in cases {
            let err = WebhookUrl::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
