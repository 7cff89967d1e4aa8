//! What a run measured: the join of what was sent with what arrived, the
//! figures, the verdict, and their two forms (a table for people, one JSON
//! line for scripts). Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::driver::{Outcome, Sent};
use super::receiver::{Arrival, Fetch};

/// The `q` quantile by nearest rank (the smallest value with at least
/// `q` of the values at or below it); `None` when there are no values.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// p50/p95/p99/max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let ms = |q: f64| percentile(&samples, q).map(|d| round(d.as_secs_f64() * 1e3, 3));
        Some(Self {
            p50: ms(0.50)?,
            p95: ms(0.95)?,
            p99: ms(0.99)?,
            max: ms(1.0)?,
        })
    }
}

/// `value` to `decimals` places, so the JSON line stays readable.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

/// What was sent joined with what arrived.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub accepted: u64,
    /// Unique (subscription, webhook-id) deliveries of accepted events.
    pub delivered: u64,
    /// Arrivals of a (subscription, webhook-id) already delivered.
    pub duplicates: u64,
    /// Unique deliveries of events the bench does not know as accepted.
    pub unexpected: u64,
    /// Arrival − intended send time of each first delivery.
    pub e2e: Vec<Duration>,
    /// Fetch completion − intended send time of each first delivery.
    pub fetch: Vec<Duration>,
    pub fetch_failures: u64,
    pub last_delivery: Option<Instant>,
}

/// Joins arrivals to sends by comment id; the first arrival per
/// (subscription, webhook-id) is the delivery, later ones are duplicates.
pub fn tally(sends: &[Sent], arrivals: &mut [Arrival]) -> Tally {
    let sent_at: HashMap<&str, Instant> = sends
        .iter()
        .filter_map(|sent| Some((sent.comment_id.as_deref()?, sent.intended)))
        .collect();
    let mut tally = Tally {
        accepted: sent_at.len() as u64,
        ..Tally::default()
    };
    arrivals.sort_by_key(|arrival| arrival.at);
    let mut seen = HashSet::new();
    for arrival in arrivals.iter() {
        if arrival.fetch == Fetch::Failed {
            tally.fetch_failures += 1;
        }
        if !seen.insert((arrival.subscription, &arrival.webhook_id)) {
            tally.duplicates += 1;
            continue;
        }
        let Some(&intended) = sent_at.get(&*arrival.comment_id) else {
            tally.unexpected += 1;
            continue;
        };
        tally.delivered += 1;
        tally
            .e2e
            .push(arrival.at.saturating_duration_since(intended));
        if let Fetch::Done(fetched) = arrival.fetch {
            tally
                .fetch
                .push(fetched.saturating_duration_since(intended));
        }
        tally.last_delivery = Some(
            tally
                .last_delivery
                .map_or(arrival.at, |t| t.max(arrival.at)),
        );
    }
    tally
}

/// POST answers by status, and how many got none.
#[derive(Debug, Default, PartialEq)]
pub struct Answers {
    pub by_status: BTreeMap<String, u64>,
    pub non_2xx: u64,
    pub status_500: u64,
    pub errors: u64,
}

pub fn answers(sends: &[Sent]) -> Answers {
    let mut answers = Answers::default();
    for sent in sends {
        match sent.outcome {
            Outcome::Status(status) => {
                *answers.by_status.entry(status.to_string()).or_default() += 1;
                answers.non_2xx += u64::from(!(200..300).contains(&status));
                answers.status_500 += u64::from(status == 500);
            }
            Outcome::Error => answers.errors += 1,
        }
    }
    answers
}

/// Events per second over a window; 0 for an empty one.
pub fn per_sec(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        round(count as f64 / window.as_secs_f64(), 1)
    }
}

/// A Markdown table of several runs, one row each: the figures
/// BENCHMARKS.md quotes.
pub fn summary(reports: &[Report]) -> String {
    let mut out = String::from(
        "\n| backend | load | accepted/s | deliveries/s | drain s | e2e p50 / p99 ms \
         | notify+fetch p99 ms | duplicates | 500s | CPU s | peak RSS MiB | passed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |latency: Option<Latency>, pick: fn(&Latency) -> f64| {
        latency.map_or("-".to_owned(), |l| format!("{:.1}", pick(&l)))
    };
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} / {} | {} | {} | {} | {:.1} | {:.0} | {} |",
            r.backend,
            r.label.as_deref().unwrap_or(r.scenario),
            r.accepted_per_sec,
            r.deliveries_per_sec,
            r.drain_secs,
            ms(r.e2e_ms, |l| l.p50),
            ms(r.e2e_ms, |l| l.p99),
            ms(r.fetch_ms, |l| l.p99),
            r.duplicates,
            r.post_500,
            r.gateway_cpu_secs,
            r.gateway_peak_rss_mb,
            if r.passed { "yes" } else { "no" },
        );
    }
    out
}

/// The one JSON line of a run (field order is the table's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub gateway_bin: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// `live` (`serve --role all` under load) or `backlog`.
    pub scenario: &'static str,
    pub fetch: bool,
    pub fan_out: u32,
    pub concurrency: usize,
    /// Events asked for; `sent` is fewer only when `--max-secs` cut the run.
    pub events: u64,
    /// Paced events per second; `null`: as fast as possible.
    pub rate: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    /// Accepted / (last POST completed − first POST sent).
    pub accepted_per_sec: f64,
    pub post_status: BTreeMap<String, u64>,
    pub post_non_2xx: u64,
    pub post_500: u64,
    /// POSTs with no answer (connection error, timeout) or a 2xx without `Location`.
    pub post_errors: u64,
    /// accepted × fan_out.
    pub expected_deliveries: u64,
    /// Unique (subscription, webhook-id) deliveries of accepted events.
    pub delivered: u64,
    pub duplicates: u64,
    /// Deliveries of events no accepted POST created.
    pub unexpected_deliveries: u64,
    /// Requests to the receiver that were not a notification.
    pub receiver_rejected: u64,
    /// Delivered / (last delivery − start): the start is the first POST
    /// (`live`) or the worker's start (`backlog`).
    pub deliveries_per_sec: f64,
    /// Last delivery − last POST completed (`live`) or − the worker's start (`backlog`).
    pub drain_secs: f64,
    /// POST answered − intended send time, of accepted events: how long
    /// accepting an event took.
    pub post_ms: Option<Latency>,
    /// Receiver arrival − intended send time, first delivery per subscription.
    pub e2e_ms: Option<Latency>,
    /// Fetch completed − intended send time (`--fetch`).
    pub fetch_ms: Option<Latency>,
    pub fetch_failures: u64,
    /// CPU seconds of the gateway from the first POST to the end (`live`),
    /// or of the whole worker process (`backlog`).
    pub gateway_cpu_secs: f64,
    /// Peak resident memory (VmHWM) of that process, MiB.
    pub gateway_peak_rss_mb: f64,
    /// Whether that process exited with success on SIGTERM.
    pub gateway_clean_exit: bool,
    /// Paced runs: the longest an event was sent after its slot.
    pub driver_max_lag_ms: Option<f64>,
    pub elapsed_secs: f64,
    pub passed: bool,
    pub failures: Vec<String>,
}

impl Report {
    /// What makes the run fail; empty when it passes.
    pub fn check(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.sent < self.events {
            failures.push(format!(
                "only {} of {} events were sent within --max-secs",
                self.sent, self.events
            ));
        }
        if self.accepted == 0 {
            failures.push("no event was accepted".to_owned());
        }
        if self.delivered < self.expected_deliveries {
            failures.push(format!(
                "{} of {} deliveries never arrived",
                self.expected_deliveries - self.delivered,
                self.expected_deliveries
            ));
        }
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        };
        count(self.duplicates, "duplicate deliveries");
        count(self.post_500, "POSTs answered 500");
        count(self.post_errors, "POSTs got no usable answer");
        count(self.fetch_failures, "fetches failed");
        count(
            self.receiver_rejected,
            "requests to the receiver were not notifications",
        );
        if !self.gateway_clean_exit {
            failures.push("the gateway did not exit cleanly on SIGTERM".to_owned());
        }
        failures
    }

    /// Sets `passed` and `failures` from the figures.
    pub fn conclude(mut self) -> Self {
        self.failures = self.check();
        self.passed = self.failures.is_empty();
        self
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human form.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let pace = self.rate.map_or("as fast as possible".to_owned(), |r| {
            format!("paced at {r}/s")
        });
        let _ = writeln!(
            out,
            "thinhook bench{}: {} on {}, fan-out {}, {} clients, {} events {pace}{}",
            self.label
                .as_deref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default(),
            self.scenario,
            self.backend,
            self.fan_out,
            self.concurrency,
            self.events,
            if self.fetch { ", notify+fetch" } else { "" },
        );
        let statuses = self
            .post_status
            .iter()
            .map(|(status, n)| format!("{status}×{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "  {name:<18} {value}");
        };
        row(
            "accepted",
            format!(
                "{} of {} sent, {}/s",
                self.accepted, self.sent, self.accepted_per_sec
            ),
        );
        row(
            "POST answers",
            format!(
                "{statuses}; non-2xx {}, 500 {}, no answer {}",
                self.post_non_2xx, self.post_500, self.post_errors
            ),
        );
        row(
            "delivered",
            format!(
                "{} of {}, {} duplicates, {} unexpected, {}/s",
                self.delivered,
                self.expected_deliveries,
                self.duplicates,
                self.unexpected_deliveries,
                self.deliveries_per_sec
            ),
        );
        row("drain", format!("{:.3} s", self.drain_secs));
        let latency = |l: Option<Latency>| {
            l.map_or("-".to_owned(), |l| {
                format!("p50 {} p95 {} p99 {} max {}", l.p50, l.p95, l.p99, l.max)
            })
        };
        row("POST ms", latency(self.post_ms));
        row("e2e ms", latency(self.e2e_ms));
        if self.fetch {
            row("notify+fetch ms", latency(self.fetch_ms));
            row("fetch failures", self.fetch_failures.to_string());
        }
        row(
            "gateway",
            format!(
                "{:.2} CPU s, peak RSS {:.1} MiB",
                self.gateway_cpu_secs, self.gateway_peak_rss_mb
            ),
        );
        if let Some(lag) = self.driver_max_lag_ms {
            row("driver max lag", format!("{lag} ms"));
        }
        row(
            "result",
            if self.passed {
                format!("PASS in {:.1} s", self.elapsed_secs)
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 0.50), Some(ms(50)));
        assert_eq!(percentile(&values, 0.95), Some(ms(95)));
        assert_eq!(percentile(&values, 0.99), Some(ms(99)));
        assert_eq!(percentile(&values, 1.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(2)], 0.0), Some(ms(1)));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(Latency::of(Vec::new()), None);
        let latency = Latency::of(vec![ms(3), ms(1), ms(2)]).unwrap();
        assert_eq!((latency.p50, latency.max), (2.0, 3.0));
    }

    fn sent(comment: Option<&str>, intended: Instant, outcome: Outcome) -> Sent {
        Sent {
            comment_id: comment.map(Into::into),
            intended,
            completed: intended + ms(1),
            outcome,
        }
    }

    fn arrival(
        subscription: u32,
        event: &str,
        comment: &str,
        at: Instant,
        fetch: Fetch,
    ) -> Arrival {
        Arrival {
            subscription,
            webhook_id: event.into(),
            comment_id: comment.into(),
            at,
            fetch,
        }
    }

    #[test]
    fn the_first_arrival_per_subscription_and_webhook_id_is_the_delivery() {
        let t0 = Instant::now();
        let sends = [
            sent(Some("cmt_a"), t0, Outcome::Status(201)),
            sent(Some("cmt_b"), t0 + ms(10), Outcome::Status(201)),
            sent(None, t0, Outcome::Status(503)),
        ];
        let mut arrivals = [
            arrival(0, "evt_a", "cmt_a", t0 + ms(5), Fetch::Done(t0 + ms(8))),
            // A retry of evt_a to subscription 0, listed before the first.
            arrival(0, "evt_a", "cmt_a", t0 + ms(40), Fetch::Done(t0 + ms(41))),
            arrival(1, "evt_a", "cmt_a", t0 + ms(6), Fetch::Failed),
            arrival(0, "evt_b", "cmt_b", t0 + ms(30), Fetch::Done(t0 + ms(35))),
            arrival(0, "evt_x", "cmt_x", t0 + ms(50), Fetch::NotAsked),
        ];
        arrivals.swap(0, 1);

        let tally = tally(&sends, &mut arrivals);

        assert_eq!(tally.accepted, 2);
        assert_eq!(tally.delivered, 3);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.unexpected, 1);
        assert_eq!(tally.fetch_failures, 1);
        assert_eq!(tally.e2e, [ms(5), ms(6), ms(20)]);
        assert_eq!(tally.fetch, [ms(8), ms(25)]);
        assert_eq!(tally.last_delivery, Some(t0 + ms(30)));
    }

    #[test]
    fn answers_count_non_2xx_500_and_no_answer_apart() {
        let t0 = Instant::now();
        let sends = [
            sent(Some("cmt_a"), t0, Outcome::Status(201)),
            sent(None, t0, Outcome::Status(503)),
            sent(None, t0, Outcome::Status(500)),
            sent(None, t0, Outcome::Error),
        ];
        let answers = answers(&sends);
        assert_eq!(answers.non_2xx, 2);
        assert_eq!(answers.status_500, 1);
        assert_eq!(answers.errors, 1);
        assert_eq!(
            answers.by_status.into_iter().collect::<Vec<_>>(),
            [("201".into(), 1), ("500".into(), 1), ("503".into(), 1)]
        );
    }

    fn passing_report() -> Report {
        Report {
            label: Some("unit".into()),
            gateway_bin: "thinhook".into(),
            backend: "sqlite",
            scenario: "live",
            fetch: true,
            fan_out: 2,
            concurrency: 4,
            events: 10,
            rate: None,
            sent: 10,
            accepted: 9,
            accepted_per_sec: 900.0,
            post_status: BTreeMap::from([("201".into(), 9), ("503".into(), 1)]),
            post_non_2xx: 1,
            post_500: 0,
            post_errors: 0,
            expected_deliveries: 18,
            delivered: 18,
            duplicates: 0,
            unexpected_deliveries: 0,
            receiver_rejected: 0,
            deliveries_per_sec: 1800.0,
            drain_secs: 0.01,
            post_ms: Latency::of(vec![ms(1), ms(2)]),
            e2e_ms: Latency::of(vec![ms(2), ms(3)]),
            fetch_ms: Latency::of(vec![ms(4), ms(5)]),
            fetch_failures: 0,
            gateway_cpu_secs: 0.5,
            gateway_peak_rss_mb: 30.0,
            gateway_clean_exit: true,
            driver_max_lag_ms: None,
            elapsed_secs: 3.0,
            passed: false,
            failures: Vec::new(),
        }
        .conclude()
    }

    #[test]
    fn a_run_passes_only_when_everything_arrived_once_without_500s() {
        let report = passing_report();
        assert!(report.passed, "{:?}", report.failures);

        let failed = Report {
            delivered: 17,
            duplicates: 2,
            post_500: 1,
            fetch_failures: 3,
            ..passing_report()
        }
        .conclude();
        assert!(!failed.passed);
        assert_eq!(
            failed.failures,
            [
                "1 of 18 deliveries never arrived",
                "2 duplicate deliveries",
                "1 POSTs answered 500",
                "3 fetches failed"
            ]
        );
    }

    #[test]
    fn the_json_line_is_one_line_with_the_figures() {
        let line = passing_report().json_line();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["backend"], "sqlite");
        assert_eq!(json["expected_deliveries"], 18);
        assert_eq!(json["delivered"], 18);
        assert_eq!(json["post_status"]["503"], 1);
        assert_eq!(json["e2e_ms"]["max"], 3.0);
        assert_eq!(json["rate"], serde_json::Value::Null);
        assert_eq!(json["passed"], true);
        assert!(passing_report().table().contains("PASS"));
    }

    #[test]
    fn the_summary_has_a_row_per_run() {
        let summary = summary(&[passing_report(), passing_report()]);
        let rows: Vec<&str> = summary
            .lines()
            .filter(|l| l.starts_with("| sqlite"))
            .collect();
        assert_eq!(rows.len(), 2, "{summary}");
        assert!(rows[0].ends_with("| yes |"), "{summary}");
        assert_eq!(
            rows[0].matches('|').count(),
            summary.lines().nth(1).unwrap().matches('|').count()
        );
    }
}
