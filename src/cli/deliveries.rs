//! `thinhook deliveries`: the delivery log across every client, for the
//! operator, and the two ways to send again. The same repository functions
//! as `GET /deliveries`, `POST /deliveries/{id}/retry` and
//! `POST /subscriptions/{id}/replay`, without the API's owner check.

use std::collections::HashMap;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use time::PrimitiveDateTime;

use crate::clock::{self, SINCE_FORMAT, SystemClock};
use crate::db::models::{DeliveryRow, EventRow, SubscriptionRow};
use crate::db::{self, Database, DbConnection, deliveries, queue, subscriptions};
use crate::domain::cursor::Cursor;
use crate::domain::{ClientId, DeliveryId, SubscriptionId, WorkspaceId};

#[derive(Debug, clap::Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, oldest first: everyone's, one workspace's, one
    /// client's or one subscription's.
    ///
    /// Prints a table on stdout. When more deliveries follow, the cursor of
    /// the next page (for `--after`) is printed on stderr.
    List(ListArgs),
    /// Queue a finished (failed or delivered) delivery for one more attempt, now.
    ///
    /// A running gateway picks it up at once on PostgreSQL (the change is
    /// announced with NOTIFY), and on SQLite at its next queue poll, within
    /// `delivery.poll_interval_ms` (1 s by default). A delivery that is
    /// still queued is refused: one attempt at a time.
    Retry {
        /// The delivery's id (`dlv_…`), as `deliveries list` shows it.
        #[arg(value_parser = DeliveryId::parse)]
        id: DeliveryId,
    },
    /// Queue a subscription's failed (or all finished) deliveries since a
    /// time again.
    ///
    /// At most 1000 a run: run it again for the rest. Deliveries still
    /// queued are left alone, so running it twice queues nothing twice. A
    /// running gateway picks them up as it does a `retry`: at once on
    /// PostgreSQL, within `delivery.poll_interval_ms` (1 s) on SQLite.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the deliveries of this workspace's subscriptions (`wsp_…`).
    #[arg(long, value_name = "ID", value_parser = WorkspaceId::parse, conflicts_with_all = ["client", "subscription"])]
    workspace: Option<WorkspaceId>,
    /// Only the deliveries of this client's subscriptions (`cli_…`).
    #[arg(long, value_name = "ID", value_parser = ClientId::parse, conflicts_with = "subscription")]
    client: Option<ClientId>,
    /// Only this subscription's deliveries (`sub_…`).
    #[arg(long, value_name = "ID", value_parser = SubscriptionId::parse)]
    subscription: Option<SubscriptionId>,
    /// Only deliveries in this state.
    #[arg(long, value_parser = PossibleValuesParser::new(deliveries::STATUSES))]
    status: Option<String>,
    /// Only deliveries created at or after this RFC 3339 time, e.g.
    /// 2026-11-29T12:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = since_arg)]
    since: Option<PrimitiveDateTime>,
    /// Deliveries per page, 1 to 1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Start after this cursor: the one printed after the previous page
    /// (the API's `next_cursor` works too).
    #[arg(long, value_name = "CURSOR", value_parser = cursor_arg)]
    after: Option<DeliveryId>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The subscription whose deliveries to queue again (`sub_…`).
    #[arg(long, value_name = "ID", value_parser = SubscriptionId::parse)]
    subscription: SubscriptionId,
    /// Only deliveries created at or after this RFC 3339 time, e.g.
    /// 2026-11-29T12:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = since_arg)]
    since: PrimitiveDateTime,
    /// Which finished deliveries to queue again.
    #[arg(long, value_enum, default_value = "failed")]
    include: Include,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Include {
    /// Only the failed ones.
    Failed,
    /// Failed and delivered ones.
    All,
}

impl Include {
    fn statuses(self) -> &'static [&'static str] {
        match self {
            Self::Failed => &[deliveries::FAILED],
            Self::All => &[deliveries::FAILED, deliveries::DELIVERED],
        }
    }
}

fn since_arg(value: &str) -> Result<PrimitiveDateTime, String> {
    clock::parse_since(value).ok_or_else(|| SINCE_FORMAT.to_owned())
}

/// A page cursor of the delivery lists, as the API and this command print them.
fn cursor_arg(value: &str) -> Result<DeliveryId, String> {
    Cursor::decode(value)
        .ok()
        .and_then(|cursor| DeliveryId::parse(cursor.key()).ok())
        .ok_or_else(|| {
            "not a cursor of a delivery list; pass the one the previous page printed".into()
        })
}

pub fn run(db: &Database, command: DeliveriesCommand) -> anyhow::Result<()> {
    let mut conn = db.get()?;
    match command {
        DeliveriesCommand::List(args) => list(&mut conn, &args),
        DeliveriesCommand::Retry { id } => retry(&mut conn, &id),
        DeliveriesCommand::Replay(args) => replay(&mut conn, &args),
    }
}

fn list(conn: &mut DbConnection, args: &ListArgs) -> anyhow::Result<()> {
    // An id that names nothing is a mistake to point out, not an empty list.
    let of = match (&args.workspace, &args.client, &args.subscription) {
        (Some(workspace), _, _) => {
            db::workspaces::find(conn, workspace.as_str())?
                .with_context(|| format!("no workspace `{workspace}`"))?;
            deliveries::DeliveriesOf::Workspace(workspace.clone())
        }
        (None, Some(client), _) => {
            let row = db::clients::find(conn, client.as_str())?
                .with_context(|| format!("no client `{client}`"))?;
            deliveries::DeliveriesOf::Owner(subscriptions::Owner {
                workspace: WorkspaceId::parse(&row.workspace_id)?,
                client: client.clone(),
            })
        }
        (None, None, Some(subscription)) => {
            subscriptions::find(conn, subscription.as_str())?
                .with_context(|| format!("no subscription `{subscription}`"))?;
            deliveries::DeliveriesOf::Subscription(subscription.to_string())
        }
        (None, None, None) => deliveries::DeliveriesOf::All,
    };
    let limit = usize::from(args.limit);
    let mut rows = deliveries::list(
        conn,
        &of,
        args.status.as_deref(),
        args.since,
        args.after.as_ref().map(DeliveryId::as_str),
        i64::from(args.limit) + 1,
    )?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let ids: Vec<String> = rows.iter().map(|(d, _)| d.id.clone()).collect();
    let last_attempted: HashMap<String, PrimitiveDateTime> =
        deliveries::last_attempted(conn, &ids)?
            .into_iter()
            .filter_map(|(id, at)| Some((id, at?)))
            .collect();
    print!("{}", table(&rows, &last_attempted));
    match rows.last() {
        Some((last, _)) if more => eprintln!(
            "more deliveries follow: add --after {} for the next page",
            Cursor::after(last.id.as_str()).encode()
        ),
        None => eprintln!("no deliveries match"),
        Some(_) => {}
    }
    Ok(())
}

const HEADERS: [&str; 10] = [
    "ID",
    "SUBSCRIPTION",
    "EVENT",
    "TYPE",
    "STATUS",
    "ATTEMPTS",
    "CREATED",
    "LAST ATTEMPT",
    "NEXT ATTEMPT",
    "LAST RESPONSE",
];

/// The deliveries as an aligned table, one line each.
fn table(
    rows: &[(DeliveryRow, EventRow)],
    last_attempted: &HashMap<String, PrimitiveDateTime>,
) -> String {
    let cells: Vec<[String; HEADERS.len()]> = rows
        .iter()
        .map(|(delivery, event)| {
            [
                delivery.id.clone(),
                delivery.subscription_id.clone(),
                event.id.clone(),
                event.event_type.clone(),
                delivery.status.clone(),
                delivery.attempts.to_string(),
                rfc3339(delivery.created_at),
                last_attempted
                    .get(&delivery.id)
                    .map_or_else(|| "-".into(), |at| rfc3339(*at)),
                if delivery.status == deliveries::PENDING {
                    rfc3339(delivery.next_attempt_at)
                } else {
                    "-".into()
                },
                last_response(delivery),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut line = String::new();
        for (n, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if n + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        line.push('\n');
        line
    };
    let mut text = line(&HEADERS);
    for row in &cells {
        text.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    text
}

/// The answer of the last attempt: its status code and/or the error, on
/// one line, without control characters (the text may come from the
/// receiver, and must not drive the operator's terminal).
fn last_response(delivery: &DeliveryRow) -> String {
    const MAX_CHARS: usize = 80;
    let text = match (delivery.last_status_code, delivery.last_error.as_deref()) {
        (Some(code), Some(error)) => format!("{code} {error}"),
        (Some(code), None) => code.to_string(),
        (None, Some(error)) => error.to_owned(),
        (None, None) => return "-".into(),
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &clean[..end]),
        None => clean,
    }
}

/// A stored time as RFC 3339, to the second.
fn rfc3339(at: PrimitiveDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at).assume_utc();
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Says so when a subscription is disabled: what was queued for it waits.
fn note_if_disabled(subscription: &SubscriptionRow) {
    if !subscription.is_enabled() {
        eprintln!(
            "note: subscription {} is disabled ({}): its deliveries wait until it is enabled again",
            subscription.id,
            subscription
                .disabled_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        );
    }
}

fn retry(conn: &mut DbConnection, id: &DeliveryId) -> anyhow::Result<()> {
    enum Retried {
        Missing,
        /// Still queued: due then.
        Queued(PrimitiveDateTime),
        Done(Box<(DeliveryRow, EventRow, Option<SubscriptionRow>)>),
    }
    let now = clock::db_now(&SystemClock);
    // Checked and changed in one write transaction: the gateway may record
    // an attempt of this delivery meanwhile.
    let retried = db::write_transaction(conn, |conn| {
        let Some((delivery, event)) = deliveries::find(conn, id.as_str(), None)? else {
            return Ok(Retried::Missing);
        };
        if delivery.status == deliveries::PENDING {
            return Ok(Retried::Queued(delivery.next_attempt_at));
        }
        deliveries::retry_now(conn, id.as_str(), None, now)?;
        queue::announce(conn)?;
        let subscription = subscriptions::find(conn, &delivery.subscription_id)?;
        Ok(Retried::Done(Box::new((delivery, event, subscription))))
    })?;
    match retried {
        Retried::Missing => anyhow::bail!("no delivery `{id}`"),
        Retried::Queued(due) => anyhow::bail!(
            "delivery `{id}` is already queued for its next attempt (due {}); retry it once that attempt is made",
            rfc3339(due)
        ),
        Retried::Done(done) => {
            let (delivery, event, subscription) = *done;
            println!(
                "queued {id} ({} {} to {}) for an attempt now; it was {} after {} attempt{}, last response: {}",
                event.event_type,
                event.id,
                delivery.subscription_id,
                delivery.status,
                delivery.attempts,
                if delivery.attempts == 1 { "" } else { "s" },
                last_response(&delivery),
            );
            if let Some(subscription) = &subscription {
                note_if_disabled(subscription);
            }
            Ok(())
        }
    }
}

fn replay(conn: &mut DbConnection, args: &ReplayArgs) -> anyhow::Result<()> {
    let now = clock::db_now(&SystemClock);
    let replayed = db::write_transaction(conn, |conn| {
        let Some(subscription) = subscriptions::find(conn, args.subscription.as_str())? else {
            return Ok(None);
        };
        let requeued = deliveries::replay(
            conn,
            &subscription.id,
            None,
            args.include.statuses(),
            args.since,
            now,
        )?;
        if requeued > 0 {
            queue::announce(conn)?;
        }
        Ok(Some((subscription, requeued)))
    })?;
    let (subscription, requeued) =
        replayed.with_context(|| format!("no subscription `{}`", args.subscription))?;
    println!(
        "requeued {requeued} {} deliver{} of {} created since {}",
        match args.include {
            Include::Failed => "failed",
            Include::All => "finished",
        },
        if requeued == 1 { "y" } else { "ies" },
        subscription.id,
        rfc3339(args.since),
    );
    if i64::try_from(requeued).is_ok_and(|n| n >= deliveries::REPLAY_LIMIT) {
        eprintln!(
            "at most {} a run: run it again for the rest (deliveries already queued are left alone)",
            deliveries::REPLAY_LIMIT
        );
    }
    note_if_disabled(&subscription);
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn delivery(status: &str, code: Option<i32>, error: Option<&str>) -> DeliveryRow {
        DeliveryRow {
            id: "dlv_01kb0000000000000000000000".into(),
            event_id: "evt_01kb0000000000000000000000".into(),
            subscription_id: "sub_01kb0000000000000000000000".into(),
            status: status.into(),
            attempts: 2,
            next_attempt_at: datetime!(2026-11-29 12:05:00.123456),
            locked_until: None,
            locked_by: None,
            last_status_code: code,
            last_error: error.map(str::to_owned),
            delivered_at: None,
            fetched_at: None,
            created_at: datetime!(2026-11-29 12:00:00.5),
        }
    }

    fn event() -> EventRow {
        EventRow {
            id: "evt_01kb0000000000000000000000".into(),
            event_type: "comment.created".into(),
            resource_type: "comment".into(),
            resource_id: "cmt_01kb0000000000000000000000".into(),
            resource_path: "/messages/m/comments/c".into(),
            message_id: "msg_01kb0000000000000000000000".into(),
            sequence: 1,
            created_at: datetime!(2026-11-29 12:00:00),
            feed_position: None,
            traceparent: None,
            workspace_id: "wsp_00000000000000000000000000".into(),
        }
    }

    #[test]
    fn the_last_response_is_one_clean_short_line() {
        assert_eq!(last_response(&delivery("pending", None, None)), "-");
        assert_eq!(last_response(&delivery("failed", Some(503), None)), "503");
        assert_eq!(
            last_response(&delivery("pending", None, Some("timed out"))),
            "timed out"
        );
        let hostile = format!("\u{1b}[2Jgone\r\n{}", "x".repeat(200));
        let shown = last_response(&delivery("failed", Some(500), Some(&hostile)));
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("500  [2Jgone"), "{shown:?}");
        assert_eq!(shown.chars().count(), 81, "80 characters and an ellipsis");
    }

    #[test]
    fn the_table_aligns_its_columns_and_shows_the_next_attempt_only_when_queued() {
        let rows = vec![
            (delivery("pending", None, Some("timed out")), event()),
            (delivery("failed", Some(500), None), event()),
        ];
        let attempted = HashMap::from([(
            "dlv_01kb0000000000000000000000".to_owned(),
            datetime!(2026-11-29 12:01:00),
        )]);
        let text = table(&rows, &attempted);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = |line: &str, name: &str| {
            let at = lines[0].find(name).unwrap();
            line[at..].split("  ").next().unwrap().trim().to_owned()
        };
        assert_eq!(column(lines[1], "STATUS"), "pending");
        assert_eq!(column(lines[1], "CREATED"), "2026-11-29T12:00:00Z");
        assert_eq!(column(lines[1], "LAST ATTEMPT"), "2026-11-29T12:01:00Z");
        assert_eq!(column(lines[1], "NEXT ATTEMPT"), "2026-11-29T12:05:00Z");
        assert_eq!(column(lines[2], "NEXT ATTEMPT"), "-");
        assert_eq!(column(lines[2], "LAST RESPONSE"), "500");
        assert!(lines[1].ends_with("timed out"), "{text}");
    }

    #[test]
    fn a_cursor_is_checked_when_the_command_line_is_parsed() {
        let cursor = Cursor::after("dlv_01kb0000000000000000000000").encode();
        assert_eq!(
            cursor_arg(&cursor).map(|id| id.to_string()),
            Ok("dlv_01kb0000000000000000000000".to_owned())
        );
        assert!(cursor_arg("dlv_01kb0000000000000000000000").is_err());
        assert!(cursor_arg(&Cursor::after("sub_01kb0000000000000000000000").encode()).is_err());
    }
}
