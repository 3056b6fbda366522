//! The periodic audit inside `stocksync run`: every store dispatch would send to is audited
//! every `interval`, one store at a time, on a connection of its own (which holds the store's
//! [`crate::locks::RECONCILE`] lock, so instances never audit one store together).
//!
//! * A store first seen is audited one interval later; then one interval after its last
//!   audit ended; a failed audit is tried again after [`AFTER_FAILURE`] (or the interval,
//!   if shorter).
//! * An audit left running (shutdown, kill -9, a lost connection) is resumed first, from the
//!   journal's position ([`super::journal`]).
//! * Database outages are waited out with backoff; [`run`] returns only on `stop`.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::audit::Audit;
use super::{journal, targets, ReconcileError, ReconcileSettings};
use crate::backoff::BackoffPolicy;
use crate::db::DbConfig;
use crate::failures::FailureLog;
use crate::marketplace::MarketplaceClient;

/// A failed audit (marketplace refusing or down) is tried again this much later.
pub const AFTER_FAILURE: Duration = Duration::from_secs(15 * 60);
/// Finished audits are kept this many days (each store keeps its last one regardless).
const RETENTION_DAYS: i32 = 30;
/// Database trouble between rounds: from a second, doubling to a minute.
const ROUND_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60));

/// How often the schedule is looked at: a fraction of the interval, within reason.
fn tick(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Audits stores as they fall due until `stop`.
pub async fn run(db: DbConfig, settings: ReconcileSettings, stop: CancellationToken) {
    if settings.interval.is_zero() {
        // Off: nothing to do, but a supervised task must not end before the shutdown.
        stop.cancelled().await;
        return;
    }
    info!(interval = ?settings.interval, repair = settings.fix, "periodic reconciliation on");
    let client = MarketplaceClient::new(settings.client.clone());
    let mut retry = ROUND_RETRY.start();
    let mut failures = FailureLog::new("periodic reconciliation");
    loop {
        let wait = match round(&db, &settings, &client, &stop).await {
            Ok(()) => {
                retry.reset();
                failures.succeeded();
                tick(settings.interval)
            }
            Err(ReconcileError::Stopped) => return,
            Err(e) => {
                failures.failed(&e);
                retry.next_delay()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One look at the schedule: the due stores, audited one after the other.
async fn round(
    db: &DbConfig,
    settings: &ReconcileSettings,
    client: &MarketplaceClient,
    stop: &CancellationToken,
) -> Result<(), ReconcileError> {
    let mut conn = db.connect().await?;
    let mut open = Vec::new();
    for (id, name) in targets::marketplace_stores(&conn).await? {
        match targets::open(&conn, id, &name, &settings.user_agents).await? {
            Ok(target) => open.push(target),
            Err(why) => {
                debug!(store = %id, %why, "not audited");
                let why = format!("the store is no longer read: {why}");
                if journal::abandon(&conn, id, &why).await? {
                    info!(store = %id, %why, "reconciliation audit ended");
                }
            }
        }
    }
    let ids: Vec<_> = open.iter().map(|t| t.id).collect();
    let after_failure = AFTER_FAILURE.min(settings.interval);
    let schedule = journal::schedule(&conn, &ids, settings.interval, after_failure).await?;
    for due in schedule.into_iter().filter(|d| d.resumes || d.due) {
        if stop.is_cancelled() {
            return Err(ReconcileError::Stopped);
        }
        let Some(target) = open.iter().find(|t| t.id == due.store) else {
            continue;
        };
        if !targets::try_lock(&conn, target.id).await? {
            debug!(store = %target.id, "another process audits this store");
            continue;
        }
        let result = audit_one(&mut conn, settings, client, target, stop).await;
        // A failed unlock means the connection is gone, and the lock with it.
        let _ = targets::unlock(&conn, target.id).await;
        result?;
        journal::prune(&conn, RETENTION_DAYS).await?;
        super::held::prune(&conn, RETENTION_DAYS).await?;
    }
    Ok(())
}

/// Audits (or resumes) one store and records the end. Errors of the marketplace end the
/// audit as failed; errors of the database and `stop` leave it running, to resume.
async fn audit_one(
    conn: &mut Client,
    settings: &ReconcileSettings,
    client: &MarketplaceClient,
    target: &targets::Target,
    stop: &CancellationToken,
) -> Result<(), ReconcileError> {
    let (run, memory, resumed) =
        journal::begin(&*conn, target.id, target.provider, settings.fix).await?;
    if resumed {
        info!(store = %target.id, run, pages = memory.pages, "resuming a reconciliation audit where it stopped");
    } else {
        info!(store = %target.id, run, "reconciliation audit starts");
    }
    let audit = Audit {
        settings,
        client,
        target,
        fix: settings.fix,
        stop,
    };
    match audit.run(conn, memory, Some(run), &mut |_| {}).await {
        Ok(_) => journal::end(&*conn, run, None).await,
        Err(
            e @ (ReconcileError::Refused { .. }
            | ReconcileError::Unavailable { .. }
            | ReconcileError::Malformed(_)),
        ) => {
            warn!(store = %target.id, run, error = %e, "reconciliation audit failed; it will be tried again");
            journal::end(&*conn, run, Some(&e.to_string())).await
        }
        Err(e) => Err(e),
    }
}
