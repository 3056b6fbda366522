//! Process-wide Prometheus metrics. Every stage records here; `ops` serves them at `/metrics`.
//! Labels never carry credentials or free text: stores are named by their id, reasons by a
//! closed set of kinds. Labels whose values are a closed set (tables, limiter rules) are
//! created at 0 up front, so a series exists before its first event (Prometheus' `increase`
//! misses the first event of a series that appears with it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    // capture
    pub changes_captured: IntCounterVec,
    pub transactions_captured: IntCounter,
    pub queue_entries_written: IntCounter,
    pub capture_batches: IntCounter,
    pub checkpoint_lsn: IntGauge,
    pub received_lsn: IntGauge,
    pub replication_lag_bytes: IntGauge,
    pub replication_lag_seconds: prometheus::Gauge,
    pub capture_reconnects: IntCounter,
    pub bad_rows: IntCounterVec,
    pub streaming: IntGauge,
    pub slot_safe_wal_size_bytes: IntGauge,
    // queue and dispatch
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_age_seconds: prometheus::GaugeVec,
    pub items_sent: IntCounterVec,
    pub requests_sent: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub rate_limit_waits: IntCounterVec,
    pub set_computations: IntCounter,
    pub quantity_computation_seconds: Histogram,
    pub dead_letters: IntCounterVec,
    pub store_paused: IntGaugeVec,
    /// 1 while a store waits out a backoff, by why (a closed set).
    pub store_backing_off: IntGaugeVec,
    /// Upload status words no client has seen, per provider.
    pub unknown_status_words: IntCounterVec,
    /// Long-running tasks that ended unexpectedly and were restarted, per task.
    pub task_restarts: IntCounterVec,
    /// Dead letters held per store, read from the database (every instance reports it).
    pub queue_dead_letters: IntGaugeVec,
    pub dispatch_ready: IntGauge,
    // reconciliation
    /// Listings the last finished audit of a store found drifted (from the database).
    pub drift_listings: IntGaugeVec,
    pub reconcile_last_run_timestamp_seconds: prometheus::GaugeVec,
    pub reconcile_reads: IntCounterVec,
    // process and slot health
    pub slot_lost: IntGauge,
    pub build_info: IntGaugeVec,
    pub start_time_seconds: prometheus::Gauge,
    /// `/metrics` answers rendered so far (not exported): tells whether a scraper watches.
    scrapes: AtomicU64,
}

/// The tables capture reads (the values of the `table` label).
pub const CAPTURED_TABLES: [&str; 2] = ["product_stores", "product_set_items"];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new_custom(Some("stocksync".into()), None).expect("registry");
        let lag_seconds = prometheus::Gauge::new(
            "replication_lag_seconds",
            "Seconds between the newest captured commit and now (0 when idle)",
        )
        .expect("valid metric");
        r.register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        let oldest = prometheus::GaugeVec::new(
            Opts::new(
                "queue_oldest_pending_age_seconds",
                "Age of the oldest pending queue entry per store",
            ),
            &["store"],
        )
        .expect("valid metric");
        r.register(Box::new(oldest.clone())).expect("unique metric");
        let durations = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Marketplace request duration").buckets(
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            &["provider", "kind"],
        )
        .expect("valid metric");
        r.register(Box::new(durations.clone()))
            .expect("unique metric");
        let compute = Histogram::with_opts(
            HistogramOpts::new(
                "quantity_computation_seconds",
                "Time to compute one batch of quantities",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]),
        )
        .expect("valid metric");
        r.register(Box::new(compute.clone()))
            .expect("unique metric");
        let last_audit = prometheus::GaugeVec::new(
            Opts::new(
                "reconcile_last_run_timestamp_seconds",
                "End of the last finished reconciliation audit per store, seconds since the Unix epoch",
            ),
            &["store"],
        )
        .expect("valid metric");
        r.register(Box::new(last_audit.clone()))
            .expect("unique metric");
        let start_time = prometheus::Gauge::new(
            "start_time_seconds",
            "Start of this process, seconds since the Unix epoch (a change is a restart)",
        )
        .expect("valid metric");
        r.register(Box::new(start_time.clone()))
            .expect("unique metric");
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        let m = Metrics {
            changes_captured: counter_vec(
                &r,
                "changes_captured_total",
                "Row changes decoded from the slot, by table",
                &["table"],
            ),
            transactions_captured: counter(
                &r,
                "transactions_captured_total",
                "WAL transactions captured into the queue",
            ),
            queue_entries_written: counter(
                &r,
                "queue_entries_written_total",
                "Queue entries inserted or raised by capture (sets included)",
            ),
            capture_batches: counter(
                &r,
                "capture_batches_total",
                "Queue transactions committed by capture",
            ),
            checkpoint_lsn: gauge(&r, "checkpoint_lsn", "Checkpoint LSN as a number"),
            received_lsn: gauge(
                &r,
                "received_lsn",
                "Highest WAL position received from the server",
            ),
            replication_lag_bytes: gauge(
                &r,
                "replication_lag_bytes",
                "Server WAL position minus checkpoint",
            ),
            replication_lag_seconds: lag_seconds,
            capture_reconnects: counter(
                &r,
                "capture_reconnects_total",
                "Replication connection restarts",
            ),
            bad_rows: counter_vec(
                &r,
                "bad_rows_total",
                "Rows that could not be interpreted, by table",
                &["table"],
            ),
            streaming: gauge(
                &r,
                "streaming",
                "1 while this process holds the slot and streams",
            ),
            slot_safe_wal_size_bytes: gauge(
                &r,
                "slot_safe_wal_size_bytes",
                "pg_replication_slots.safe_wal_size (-1 when unlimited)",
            ),
            queue_depth: gauge_vec(
                &r,
                "queue_depth",
                "Pending queue entries per store",
                &["store"],
            ),
            queue_oldest_age_seconds: oldest,
            items_sent: counter_vec(
                &r,
                "items_sent_total",
                "Items sent per store and outcome",
                &["store", "outcome"],
            ),
            requests_sent: counter_vec(
                &r,
                "requests_total",
                "Marketplace requests per store and outcome (2xx/4xx/429/5xx/error)",
                &["store", "kind", "outcome"],
            ),
            request_duration_seconds: durations,
            rate_limit_waits: counter_vec(
                &r,
                "rate_limit_waits_total",
                "Sends deferred by a limiter, per store and rule",
                &["store", "rule"],
            ),
            set_computations: counter(&r, "set_computations_total", "Set quantities computed"),
            quantity_computation_seconds: compute,
            dead_letters: counter_vec(
                &r,
                "dead_letters_total",
                "Items moved to the dead-letter state",
                &["store"],
            ),
            store_paused: gauge_vec(
                &r,
                "store_paused",
                "1 while a store is paused, by kind (credentials, forbidden, not_configured, other)",
                &["store", "kind"],
            ),
            store_backing_off: gauge_vec(
                &r,
                "store_backing_off",
                "1 while a store waits out a backoff, by kind (throttled, server_error, unexpected_status)",
                &["store", "kind"],
            ),
            unknown_status_words: counter_vec(
                &r,
                "unknown_status_words_total",
                "Batch/upload status answers with a word stocksync does not know (treated as pending), per provider",
                &["provider"],
            ),
            task_restarts: counter_vec(
                &r,
                "task_restarts_total",
                "Long-running tasks that ended unexpectedly (panic or return) and were restarted, per task",
                &["task"],
            ),
            queue_dead_letters: gauge_vec(
                &r,
                "queue_dead_letters",
                "Dead-lettered entries held per store (until `stocksync retry-failed`)",
                &["store"],
            ),
            dispatch_ready: gauge(
                &r,
                "dispatch_ready",
                "1 while this process's dispatcher reads the queue (0 while it cannot, or before it started)",
            ),
            drift_listings: gauge_vec(
                &r,
                "drift_listings",
                "Listings the last finished reconciliation audit found showing another quantity than the database implies, per store",
                &["store"],
            ),
            reconcile_last_run_timestamp_seconds: last_audit,
            reconcile_reads: counter_vec(
                &r,
                "reconcile_reads_total",
                "Marketplace reads of reconciliation per store and outcome (ok, rate_limited, refused, client_error, server_error, transport, malformed)",
                &["store", "outcome"],
            ),
            slot_lost: gauge(
                &r,
                "slot_lost",
                "1 when the slot is lost or missing although stocksync has a checkpoint for it (the process then exits with code 3)",
            ),
            build_info: gauge_vec(
                &r,
                "build_info",
                "Always 1; the version of the running binary",
                &["version"],
            ),
            start_time_seconds: start_time,
            scrapes: AtomicU64::new(0),
            registry: r,
        };
        for table in CAPTURED_TABLES {
            m.changes_captured.with_label_values(&[table]);
            m.bad_rows.with_label_values(&[table]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for provider in ["TRENDYOL", "HEPSIBURADA"] {
            m.unknown_status_words.with_label_values(&[provider]);
        }
        m
    }

    /// Prometheus text exposition (the answer of `/metrics`: counted as a scrape).
    pub fn render(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// How many times `/metrics` was rendered in this process.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
