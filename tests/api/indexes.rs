//! The hot lookups are served by indexes: checked with the backends' own
//! EXPLAIN. (On PostgreSQL sequential scans are turned off for the check:
//! the test tables are too small for the planner to prefer an index, and
//! the question is whether one can serve.)

use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Integer, Text};
use thinhook::db::DbConnection;

#[derive(diesel::QueryableByName)]
struct SqlitePlan {
    #[diesel(sql_type = Integer)]
    #[expect(dead_code, reason = "a column of the plan")]
    id: i32,
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(diesel::QueryableByName)]
struct PostgresPlan {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The plan of `sql`, as one text.
fn plan(conn: &mut DbConnection, sql: &str) -> String {
    match conn {
        DbConnection::Sqlite(conn) => diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load::<SqlitePlan>(conn)
            .unwrap()
            .into_iter()
            .map(|row| row.detail)
            .collect::<Vec<_>>()
            .join("\n"),
        DbConnection::Postgres(conn) => {
            conn.batch_execute("SET enable_seqscan = off").unwrap();
            diesel::sql_query(format!("EXPLAIN {sql}"))
                .load::<PostgresPlan>(conn)
                .unwrap()
                .into_iter()
                .map(|row| row.line)
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

backend_tests! {
    async fn the_hot_lookups_use_their_indexes(app: &TestApp) {
        let options = app.db.connect_options().clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = options.establish().unwrap();
            let checks = [
                (
                    "SELECT * FROM subscriptions WHERE workspace_id = 'wsp_x' AND message_id IS NULL AND enabled = 1 AND event_types LIKE '% comment.created %' \
                     UNION ALL SELECT * FROM subscriptions WHERE message_id = 'msg_x' AND workspace_id = 'wsp_x' AND enabled = 1 AND event_types LIKE '% comment.created %' \
                     ORDER BY id",
                    &["subscriptions_unfiltered", "subscriptions_by_message"][..],
                ),
                ("SELECT COUNT(*) FROM subscriptions WHERE owner_client_id = 'cli_x'", &["subscriptions_by_owner"][..]),
                (
                    "SELECT * FROM events WHERE workspace_id = 'wsp_x' AND message_id = 'msg_x' AND feed_position > 5 ORDER BY feed_position LIMIT 10",
                    &["events_by_message"][..],
                ),
                (
                    "SELECT * FROM events WHERE workspace_id = 'wsp_x' AND feed_position > 5 ORDER BY feed_position LIMIT 10",
                    &["events_feed_of_workspace"][..],
                ),
                (
                    "SELECT id FROM deliveries WHERE subscription_id = 'sub_x' AND status = 'pending' \
                     AND next_attempt_at <= '2026-11-29 00:00:00' ORDER BY next_attempt_at, id LIMIT 10",
                    &["deliveries_due"][..],
                ),
                (
                    "SELECT * FROM idempotency_keys WHERE client_id = 'cli_x' AND route = 'POST /messages' \
                     AND idempotency_key = 'k'",
                    &[if matches!(conn, DbConnection::Sqlite(_)) {
                        "sqlite_autoindex_idempotency_keys_1"
                    } else {
                        "idempotency_keys_pkey"
                    }][..],
                ),
                (
                    "SELECT created_at FROM idempotency_keys WHERE created_at < '2026-11-29 00:00:00' \
                     ORDER BY created_at LIMIT 1 OFFSET 999",
                    &["idempotency_keys_by_age"][..],
                ),
            ];
            for (sql, indexes) in checks {
                let plan = plan(&mut conn, sql);
                for index in indexes {
                    assert!(plan.contains(index), "{index} does not serve {sql}:\n{plan}");
                }
            }
        })
        .await
        .unwrap();
    }
}
