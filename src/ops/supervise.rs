//! Supervision: `stocksync run` never stops working silently.
//!
//! Every long-running task (capture, dispatch — whose batch poller and pruning it watches
//! itself —, the periodic reconciliation audit, the HTTP surface, the metrics refresher, the
//! history sampler, the heartbeat)
//! runs under [`Supervisor::spawn`]. A panic, or an end before shutdown, is logged at `error`
//! with the task's name, counted in `stocksync_task_restarts_total{task}`, and marks the task
//! down (so `/readyz` fails); the task is started again after a backoff ([`RESTART`]).
//!
//! Restarting is safe for each of them: capture resumes from its checkpoint (the exactly-once
//! rules in [`crate::capture`] hold across reconnects), dispatch's claims are fenced and the
//! claims of a dead cycle are released as orphans, an audit left running resumes from its
//! journal's last page, the others keep no state. What is *not* restarted: capture ending with an error it knows to be fatal (a lost slot, schema drift, a
//! permanent refusal by the server) ends `run` with a non-zero exit code, so the orchestrator
//! and the operator see it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::backoff::BackoffPolicy;
use crate::metrics::metrics;

/// A task that ended unexpectedly is started again after 1 s, doubling to a minute: a bug
/// that ends it at once does not spin, and a passing failure costs a second.
pub const RESTART: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60));

/// A task's state, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskState {
    pub up: bool,
    pub restarts: u64,
    /// How it last ended, when it did (a panic's message or "returned").
    pub last_failure: Option<String>,
}

/// The supervised tasks of this process.
#[derive(Debug, Default)]
pub struct Tasks {
    states: Mutex<BTreeMap<&'static str, TaskState>>,
}

impl Tasks {
    fn set(&self, name: &'static str, change: impl FnOnce(&mut TaskState)) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        change(states.entry(name).or_insert(TaskState {
            up: true,
            restarts: 0,
            last_failure: None,
        }));
    }

    /// Every task and its state.
    pub fn snapshot(&self) -> BTreeMap<&'static str, TaskState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The tasks that are down now.
    pub fn down(&self) -> Vec<&'static str> {
        self.snapshot()
            .into_iter()
            .filter(|(_, s)| !s.up)
            .map(|(name, _)| name)
            .collect()
    }
}

/// Starts and watches tasks until shutdown.
#[derive(Clone)]
pub struct Supervisor {
    tasks: Arc<Tasks>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            tasks: Arc::new(Tasks::default()),
            shutdown,
        }
    }

    pub fn tasks(&self) -> Arc<Tasks> {
        self.tasks.clone()
    }

    /// Runs `make()` as task `name`, again after a backoff whenever it panics or ends before
    /// shutdown. The returned handle ends with the shutdown.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = self.tasks.clone();
        let shutdown = self.shutdown.clone();
        tasks.set(name, |s| s.up = true);
        tokio::spawn(async move {
            let mut backoff = RESTART.start();
            loop {
                let run = tokio::spawn(make());
                let ended = run.await;
                if shutdown.is_cancelled() {
                    return;
                }
                let why = match ended {
                    Ok(()) => "returned before shutdown".to_string(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e)),
                    Err(_) => "was cancelled".to_string(),
                };
                let wait = backoff.next_delay();
                error!(task = name, retry_in = ?wait, "task {why}; restarting it");
                metrics().task_restarts.with_label_values(&[name]).inc();
                tasks.set(name, |s| {
                    s.up = false;
                    s.restarts += 1;
                    s.last_failure = Some(why);
                });
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                info!(task = name, "restarting task");
                tasks.set(name, |s| s.up = true);
            }
        })
    }
}

/// The text a panic carried (`&str` or `String` payloads; others are named as such).
pub fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_logged_marked_down_and_restarted() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let stop = shutdown.clone();
        let handle = supervisor.spawn("flaky", move || {
            let (counter, stop) = (counter.clone(), stop.clone());
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run fails");
                }
                stop.cancelled().await
            }
        });
        // The panic is seen at once: down, with the message.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let state = supervisor.tasks().snapshot()["flaky"].clone();
        assert!(!state.up);
        assert_eq!(state.restarts, 1);
        assert!(state.last_failure.unwrap().contains("first run fails"));
        assert_eq!(supervisor.tasks().down(), vec!["flaky"]);
        // After the backoff it runs again and stays up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(supervisor.tasks().snapshot()["flaky"].up);
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_at_shutdown_is_not_a_failure() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        let handle = supervisor.spawn("quiet", move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        shutdown.cancel();
        handle.await.unwrap();
        let state = supervisor.tasks().snapshot()["quiet"].clone();
        assert!(state.up && state.restarts == 0);
    }
}
