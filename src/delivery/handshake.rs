//! The CloudEvents abuse-protection handshake (HTTP Webhook spec, section
//! 4): before a CloudEvents subscription receives anything, its receiver is
//! asked with `OPTIONS` whether it wants events from this gateway, and at
//! what rate. Only an answer that names this gateway's origin (or `*`) in
//! `WebHook-Allowed-Origin` is consent; until then its deliveries are held.

use std::time::Duration;

use diesel::QueryResult;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use url::Url;

use super::client::{Reply, WebhookClient};
use crate::clock::{SharedClock, to_db};
use crate::db::models::{SubscriptionRow, Verification};
use crate::db::subscriptions::{self, VerificationColumns};
use crate::db::writer::Writer;
use crate::db::{DbConnection, DbError, queue};

pub const REQUEST_ORIGIN: HeaderName = HeaderName::from_static("webhook-request-origin");
const REQUEST_RATE: HeaderName = HeaderName::from_static("webhook-request-rate");
const ALLOWED_ORIGIN: &str = "webhook-allowed-origin";
const ALLOWED_RATE: &str = "webhook-allowed-rate";

/// Waits before asking again a receiver that gave no answer: then hourly.
const UNANSWERED_RETRY_SECS: [u64; 5] = [10, 60, 300, 1800, 3600];
/// Subscriptions whose handshakes one worker asks at once.
const BATCH: i64 = 16;

/// What a receiver answered the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Consent, at most `rate` requests per minute (`None`: no limit).
    Allowed { rate: Option<u32> },
    /// An answer that is not consent: asked again only on request.
    Refused(String),
    /// No answer, or one that means "later" (408, 429, 5xx): asked again.
    Unanswered(String),
}

#[derive(Debug, Clone)]
pub struct Handshaker {
    client: WebhookClient,
    /// `WebHook-Request-Origin`: the host name of the gateway's public URL.
    origin: String,
    /// `WebHook-Request-Rate` (requests per minute), if the operator set one.
    request_rate: Option<u32>,
    /// How long a worker has to ask before another may take the handshake.
    lease: Duration,
}

impl Handshaker {
    pub fn new(
        client: WebhookClient,
        public_base_url: &str,
        request_rate: Option<u32>,
        lease: Duration,
    ) -> Self {
        let origin = Url::parse(public_base_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_else(|| "localhost".to_owned());
        Self {
            client,
            origin,
            request_rate,
            lease,
        }
    }

    /// The origin this gateway asks for and sends with every CloudEvent.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Asks the receiver at `url`.
    pub async fn ask(&self, url: &str) -> Answer {
        let Ok(url) = Url::parse(url) else {
            return Answer::Refused("the URL does not parse".into());
        };
        let mut headers = HeaderMap::new();
        if let Ok(origin) = HeaderValue::from_str(&self.origin) {
            headers.insert(REQUEST_ORIGIN, origin);
        }
        if let Some(rate) = self.request_rate {
            headers.insert(REQUEST_RATE, HeaderValue::from(rate));
        }
        interpret(
            &self.client.options(&url, headers).await,
            &self.origin,
            self.request_rate,
        )
    }

    /// Asks every receiver whose handshake is due (a batch at a time) and
    /// records the answers; returns how many consented.
    pub async fn verify_due(&self, writer: &Writer, clock: &SharedClock) -> Result<usize, DbError> {
        let now = clock.now_utc();
        let (due_at, until) = (to_db(now), to_db(now + self.lease));
        let due = writer
            .run(move |conn| subscriptions::take_due_handshakes(conn, due_at, until, BATCH))
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let answers = futures_util::future::join_all(due.iter().map(|s| self.ask(&s.url))).await;
        let now = clock.now_utc();
        let records: Vec<_> = due
            .iter()
            .zip(answers)
            .map(|(row, answer)| Self::record(row, answer, now))
            .collect();
        let consented = writer.run(move |conn| store(conn, &records)).await?;
        Ok(consented)
    }

    /// Asks `row`'s receiver now (re-verification on request) and records
    /// the answer; the subscription as stored after, if it still exists.
    pub async fn verify_now(
        &self,
        writer: &Writer,
        clock: &SharedClock,
        row: &SubscriptionRow,
    ) -> Result<Option<SubscriptionRow>, DbError> {
        let answer = self.ask(&row.url).await;
        let record = Self::record(row, answer, clock.now_utc());
        writer
            .run(move |conn| {
                store(conn, std::slice::from_ref(&record))?;
                subscriptions::find(conn, &record.0)
            })
            .await
    }

    /// What to store for `answer` to `row`'s handshake, and logs it.
    fn record(
        row: &SubscriptionRow,
        answer: Answer,
        now: OffsetDateTime,
    ) -> (String, String, VerificationColumns) {
        match &answer {
            Answer::Allowed { rate } => {
                tracing::info!(
                    subscription = row.id,
                    rate,
                    "the receiver consented to CloudEvents"
                );
            }
            Answer::Refused(why) => {
                tracing::warn!(
                    subscription = row.id,
                    why,
                    "the receiver refused CloudEvents"
                );
            }
            Answer::Unanswered(why) => {
                tracing::warn!(
                    subscription = row.id,
                    why,
                    "no answer to the CloudEvents handshake"
                );
            }
        }
        (
            row.id.clone(),
            row.url.clone(),
            columns(answer, row.verification_attempts, now),
        )
    }
}

/// Records handshakes `(subscription, url asked, columns)`; returns how many
/// consented, and when any did, tells every process that their held
/// deliveries are due.
fn store(
    conn: &mut DbConnection,
    records: &[(String, String, VerificationColumns)],
) -> QueryResult<usize> {
    let mut consented = 0;
    for (id, url, columns) in records {
        if subscriptions::record_handshake(conn, id, url, columns)?
            && columns.verification == Verification::Verified.as_str()
        {
            consented += 1;
        }
    }
    if consented > 0 {
        queue::announce(conn)?;
    }
    Ok(consented)
}

/// The handshake columns after `answer`, `attempts` unanswered ones before it.
fn columns(answer: Answer, attempts: i32, now: OffsetDateTime) -> VerificationColumns {
    let mut columns = VerificationColumns {
        verification: String::new(),
        verification_due_at: None,
        verification_attempts: 0,
        verification_error: None,
        verified_at: None,
        allowed_rate: None,
    };
    match answer {
        Answer::Allowed { rate } => {
            columns.verification = Verification::Verified.as_str().to_owned();
            columns.verified_at = Some(to_db(now));
            columns.allowed_rate = rate.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
        }
        Answer::Refused(why) => {
            columns.verification = Verification::Refused.as_str().to_owned();
            columns.verification_error = Some(why);
        }
        Answer::Unanswered(why) => {
            let step = usize::try_from(attempts).unwrap_or(0);
            let wait = UNANSWERED_RETRY_SECS[step.min(UNANSWERED_RETRY_SECS.len() - 1)];
            columns.verification = Verification::Pending.as_str().to_owned();
            columns.verification_due_at = Some(to_db(now + Duration::from_secs(wait)));
            columns.verification_attempts = attempts.saturating_add(1);
            columns.verification_error = Some(why);
        }
    }
    columns
}

/// Reads a receiver's reply to the handshake.
fn interpret(reply: &Reply, origin: &str, requested: Option<u32>) -> Answer {
    let Some(status) = reply.status else {
        return Answer::Unanswered(reply.error.clone().unwrap_or_else(|| "no answer".into()));
    };
    if status == 408 || status == 429 || status >= 500 {
        return Answer::Unanswered(format!("answered {status}"));
    }
    if !(200..300).contains(&status) {
        return Answer::Refused(format!("answered {status} to OPTIONS"));
    }
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").trim())
    };
    match header(ALLOWED_ORIGIN) {
        None => {
            return Answer::Refused(format!("answered {status} without WebHook-Allowed-Origin"));
        }
        Some(allowed) if allowed == "*" || allowed.eq_ignore_ascii_case(origin) => {}
        Some(allowed) => {
            return Answer::Refused(format!(
                "WebHook-Allowed-Origin is `{allowed}`, not `{origin}` or `*`"
            ));
        }
    }
    let allowed = match header(ALLOWED_RATE) {
        // Not given: what was asked for, if anything (the spec's default).
        None => requested,
        Some("*") => None,
        Some(rate) => match rate.parse::<u32>() {
            Ok(rate) if rate > 0 => Some(rate),
            _ => {
                return Answer::Refused(format!(
                    "WebHook-Allowed-Rate is `{rate}`, neither `*` nor a positive integer"
                ));
            }
        },
    };
    // Never faster than the gateway itself asked to send.
    let rate = match (allowed, requested) {
        (Some(allowed), Some(requested)) => Some(allowed.min(requested)),
        (allowed, requested) => allowed.or(requested),
    };
    Answer::Allowed { rate }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&'static str, &str)]) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Reply {
            status: Some(status),
            headers: map,
            ..Reply::default()
        }
    }

    const ORIGIN: &str = "gw.example.com";

    #[test]
    fn consent_names_this_origin_or_any() {
        for allowed in ["gw.example.com", "GW.Example.com", "*"] {
            let reply = reply(200, &[(ALLOWED_ORIGIN, allowed)]);
            assert_eq!(
                interpret(&reply, ORIGIN, None),
                Answer::Allowed { rate: None },
                "{allowed}"
            );
        }
        let other = reply(200, &[(ALLOWED_ORIGIN, "evil.example")]);
        assert!(matches!(
            interpret(&other, ORIGIN, None),
            Answer::Refused(_)
        ));
        let silent = reply(200, &[]);
        assert!(matches!(
            interpret(&silent, ORIGIN, None),
            Answer::Refused(_)
        ));
    }

    #[test]
    fn a_status_alone_is_never_consent() {
        for status in [204, 404, 405] {
            assert!(matches!(
                interpret(&reply(status, &[]), ORIGIN, None),
                Answer::Refused(_)
            ));
        }
        for status in [408, 429, 500, 503] {
            let with_origin = reply(status, &[(ALLOWED_ORIGIN, ORIGIN)]);
            assert!(matches!(
                interpret(&with_origin, ORIGIN, None),
                Answer::Unanswered(_)
            ));
        }
        let nothing = Reply {
            error: Some("connect: refused".into()),
            ..Reply::default()
        };
        assert_eq!(
            interpret(&nothing, ORIGIN, None),
            Answer::Unanswered("connect: refused".into())
        );
    }

    #[test]
    fn the_allowed_rate_is_honoured_and_never_above_the_requested_one() {
        let with_rate = |rate: &str| reply(200, &[(ALLOWED_ORIGIN, "*"), (ALLOWED_RATE, rate)]);
        assert_eq!(
            interpret(&with_rate("120"), ORIGIN, None),
            Answer::Allowed { rate: Some(120) }
        );
        assert_eq!(
            interpret(&with_rate("120"), ORIGIN, Some(60)),
            Answer::Allowed { rate: Some(60) }
        );
        assert_eq!(
            interpret(&with_rate("*"), ORIGIN, None),
            Answer::Allowed { rate: None }
        );
        assert_eq!(
            interpret(&reply(200, &[(ALLOWED_ORIGIN, "*")]), ORIGIN, Some(30)),
            Answer::Allowed { rate: Some(30) }
        );
        for bad in ["0", "-1", "fast", "1.5"] {
            assert!(matches!(
                interpret(&with_rate(bad), ORIGIN, None),
                Answer::Refused(_)
            ));
        }
    }

    #[test]
    fn unanswered_handshakes_are_asked_again_later_and_later() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let first = columns(Answer::Unanswered("timeout".into()), 0, now);
        assert_eq!(first.verification, "pending");
        assert_eq!(first.verification_attempts, 1);
        assert_eq!(
            first.verification_due_at,
            Some(to_db(now + Duration::from_secs(10)))
        );
        let much_later = columns(Answer::Unanswered("timeout".into()), 40, now);
        assert_eq!(
            much_later.verification_due_at,
            Some(to_db(now + Duration::from_secs(3600)))
        );
        let refused = columns(Answer::Refused("no".into()), 3, now);
        assert_eq!(
            (
                refused.verification.as_str(),
                refused.verification_due_at,
                refused.verification_attempts
            ),
            ("refused", None, 0)
        );
        let allowed = columns(Answer::Allowed { rate: Some(60) }, 3, now);
        assert_eq!(allowed.allowed_rate, Some(60));
        assert_eq!(allowed.verified_at, Some(to_db(now)));
    }
}
