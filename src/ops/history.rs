//! The last hour of a few figures, for the dashboard's charts: replication lag in bytes,
//! changes captured per second, items sent per second per store and queue depth per store.
//!
//! A sample is taken every [`SAMPLE_EVERY`] from this process's own metrics (no database
//! query) into a ring of one hour ([`KEEP`]); rates are the counters' increase between two
//! samples. The ring is process-wide, like the metrics it reads: when two services run in one
//! process (tests), samples closer than half an interval are skipped, so there is one series.
//! `/api/history?since=MS` answers the samples taken after `MS` (milliseconds since the Unix
//! epoch), so the page fetches the hour once and then only what is new.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{metrics, CAPTURED_TABLES};
use crate::queue::Outcome;

/// Time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the ring reaches.
pub const KEEP: Duration = Duration::from_secs(3600);

/// One point of every chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: i64,
    pub lag_bytes: i64,
    /// `None` for the first sample of the process (no earlier one to compare with).
    pub changes_per_second: Option<f64>,
    /// Per store id: items the marketplace took (outcome `sent`) per second since the last
    /// sample.
    pub items_sent_per_second: BTreeMap<String, f64>,
    /// Per store id: pending entries (stores without pending entries are absent: 0).
    pub queue_depth: BTreeMap<String, i64>,
}

/// The counters a rate is computed from, as read at one instant.
#[derive(Debug, Clone)]
struct Totals {
    at: Instant,
    changes: u64,
    sent: HashMap<String, u64>,
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
}

/// The process-wide history.
pub struct History {
    ring: Mutex<Ring>,
    capacity: usize,
}

/// The history of this process.
pub fn history() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| History::new(capacity(KEEP, SAMPLE_EVERY)))
}

fn capacity(keep: Duration, every: Duration) -> usize {
    (keep.as_millis() / every.as_millis().max(1)) as usize + 1
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl History {
    fn new(capacity: usize) -> History {
        History {
            ring: Mutex::new(Ring::default()),
            capacity,
        }
    }

    /// Takes a sample from the metrics now, unless one was taken less than half an interval
    /// ago.
    pub fn sample(&self) {
        let totals = read_totals();
        let lag_bytes = metrics().replication_lag_bytes.get();
        let depth = gauge_by_store(&metrics().queue_depth.collect());
        self.record(now_ms(), totals, lag_bytes, depth, SAMPLE_EVERY / 2);
    }

    fn record(
        &self,
        t: i64,
        totals: Totals,
        lag_bytes: i64,
        queue_depth: BTreeMap<String, i64>,
        min_gap: Duration,
    ) {
        let mut ring = self.ring.lock().expect("history lock");
        let (changes_per_second, items_sent_per_second) = match &ring.last {
            Some(last) if totals.at.duration_since(last.at) < min_gap => return,
            Some(last) => {
                let seconds = totals.at.duration_since(last.at).as_secs_f64();
                let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
                let items = totals
                    .sent
                    .iter()
                    .map(|(store, n)| {
                        let before = last.sent.get(store).copied().unwrap_or(0);
                        (store.clone(), rate(*n, before))
                    })
                    .collect();
                (Some(rate(totals.changes, last.changes)), items)
            }
            None => (None, BTreeMap::new()),
        };
        ring.last = Some(totals);
        if ring.samples.len() == self.capacity {
            ring.samples.pop_front();
        }
        ring.samples.push_back(Sample {
            t,
            lag_bytes,
            changes_per_second,
            items_sent_per_second,
            queue_depth,
        });
    }

    /// Samples taken after `since` (ms since the epoch), oldest first.
    pub fn since(&self, since: i64) -> Vec<Sample> {
        let ring = self.ring.lock().expect("history lock");
        ring.samples
            .iter()
            .filter(|s| s.t > since)
            .cloned()
            .collect()
    }
}

fn read_totals() -> Totals {
    let m = metrics();
    let changes = CAPTURED_TABLES
        .iter()
        .map(|table| m.changes_captured.with_label_values(&[table]).get())
        .sum();
    let mut sent: HashMap<String, u64> = HashMap::new();
    for family in m.items_sent.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.get_name() == name)
                    .map(|l| l.get_value().to_string())
            };
            if label("outcome").as_deref() == Some(Outcome::Sent.as_str()) {
                if let Some(store) = label("store") {
                    *sent.entry(store).or_default() += metric.get_counter().get_value() as u64;
                }
            }
        }
    }
    Totals {
        at: Instant::now(),
        changes,
        sent,
    }
}

/// A `{store}` gauge vector's values by store.
fn gauge_by_store(families: &[prometheus::proto::MetricFamily]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for family in families {
        for metric in family.get_metric() {
            if let Some(store) = metric.get_label().iter().find(|l| l.get_name() == "store") {
                out.insert(
                    store.get_value().to_string(),
                    metric.get_gauge().get_value() as i64,
                );
            }
        }
    }
    out
}

/// Samples every [`SAMPLE_EVERY`] until `shutdown` (the first one at once).
pub async fn run(shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => history().sample(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Only samples after this instant (ms since the Unix epoch); all when absent.
    since: Option<i64>,
}

/// The answer of `/api/history`.
#[derive(Debug, Serialize)]
struct HistoryAnswer {
    now: i64,
    sample_every_seconds: u64,
    keep_seconds: u64,
    samples: Vec<Sample>,
}

/// `GET /api/history[?since=MS]`.
pub async fn api(Query(query): Query<HistoryQuery>) -> Response {
    axum::Json(HistoryAnswer {
        now: now_ms(),
        sample_every_seconds: SAMPLE_EVERY.as_secs(),
        keep_seconds: KEEP.as_secs(),
        samples: history().since(query.since.unwrap_or(i64::MIN)),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(at: Instant, changes: u64, sent: &[(&str, u64)]) -> Totals {
        Totals {
            at,
            changes,
            sent: sent.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn rates_are_increases_per_second_between_samples() {
        let h = History::new(10);
        let start = Instant::now();
        let gap = Duration::from_secs(1);
        h.record(
            1_000,
            totals(start, 10, &[("a", 4)]),
            7,
            BTreeMap::new(),
            gap,
        );
        h.record(
            6_000,
            totals(start + Duration::from_secs(5), 60, &[("a", 14), ("b", 5)]),
            9,
            BTreeMap::from([("b".to_string(), 3)]),
            gap,
        );
        let samples = h.since(i64::MIN);
        assert_eq!(samples.len(), 2);
        assert_eq!(
            samples[0].changes_per_second, None,
            "nothing to compare with"
        );
        assert_eq!(samples[1].changes_per_second, Some(10.0));
        assert_eq!(
            samples[1].items_sent_per_second,
            BTreeMap::from([("a".to_string(), 2.0), ("b".to_string(), 1.0)]),
            "a store first seen counts from 0"
        );
        assert_eq!(samples[1].lag_bytes, 9);
        assert_eq!(samples[1].queue_depth["b"], 3);
        assert_eq!(h.since(1_000).len(), 1, "since is exclusive");
    }

    #[test]
    fn samples_closer_than_the_gap_are_skipped_and_the_ring_keeps_its_capacity() {
        let h = History::new(3);
        let start = Instant::now();
        let gap = Duration::from_secs(2);
        for i in 0..10u64 {
            let at = start + Duration::from_secs(5 * i);
            h.record(i as i64, totals(at, i, &[]), 0, BTreeMap::new(), gap);
            // A second service in the same process, a moment later: skipped.
            h.record(
                i as i64,
                totals(at + Duration::from_millis(10), i, &[]),
                0,
                BTreeMap::new(),
                gap,
            );
        }
        let ts: Vec<i64> = h.since(i64::MIN).iter().map(|s| s.t).collect();
        assert_eq!(ts, [7, 8, 9]);
    }

    #[test]
    fn one_hour_of_samples_fits() {
        assert_eq!(capacity(KEEP, SAMPLE_EVERY), 721);
    }
}
