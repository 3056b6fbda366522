//! `stocksync reconcile [--store ID] [--fix] [--json]`: audits now every store dispatch would
//! send to (or one), store by store with a progress bar on a terminal, and prints what each
//! marketplace shows against the database. Without `--fix` nothing is written but the
//! limiter's records of the reads; with it, drifted listings get repair entries that the
//! running service pushes.
//!
//! Exit code: 0 when nothing drifted (or every drifted listing was enqueued for repair with
//! `--fix`), 1 when drift remains or a store could not be audited (said on stderr).
//! Listings held back (shown lower than the database, waiting `reconcile_confirm_after` for
//! an order import, [`crate::reconcile::held`]) are reported with their time but are not
//! drift that remains: nothing is wrong yet, and the audit after that time repairs them if
//! the difference is still there (or they agree by then).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::Config;
use super::resync::progress_bar;
use super::EXIT_RUNTIME;
use crate::marketplace::MarketplaceClient;
use crate::reconcile::{targets, Audit, Memory, Progress, StoreReport};

/// How often a command waiting for another audit of the store looks again.
const LOCK_POLL: Duration = Duration::from_secs(1);

pub async fn command(
    config: &Config,
    store: Option<Uuid>,
    fix: bool,
    json: bool,
) -> Result<ExitCode> {
    let settings = super::reconcile_settings(config);
    let client = MarketplaceClient::new(settings.client.clone());
    let mut conn = config
        .db()?
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let all = targets::marketplace_stores(&conn)
        .await
        .context("reading the stores")?;
    let chosen: Vec<(Uuid, String)> = match store {
        Some(id) => vec![all
            .into_iter()
            .find(|(s, _)| *s == id)
            .unwrap_or_else(|| (id, id.to_string()))],
        None => all,
    };
    let terminal = std::io::stderr().is_terminal();
    let stop = CancellationToken::new();
    let mut reports = Vec::new();
    let mut failed = false;
    for (id, name) in chosen {
        let target = match targets::open(&conn, id, &name, &settings.user_agents).await? {
            Ok(target) => target,
            Err(why) => {
                eprintln!("store {name} ({id}) is not read: {why}");
                failed |= store.is_some();
                continue;
            }
        };
        if !targets::try_lock(&conn, id).await? {
            eprintln!("store {name} ({id}) is being audited by another process; waiting for it");
            targets::lock(&conn, id, LOCK_POLL, &stop).await?;
        }
        let mut bar = |p: &Progress| {
            if terminal {
                let (done, total) = match p.total_pages {
                    Some(total) if !p.not_seen_phase => (p.pages, total.max(p.pages)),
                    _ => (1, 1),
                };
                let phase = if p.not_seen_phase {
                    "listings no page showed".to_string()
                } else {
                    format!("page {}", p.pages)
                };
                let label = format!(
                    "{name}: {phase}, {} checked, {} drifted",
                    p.tally.checked(),
                    p.tally.drifted
                );
                eprint!("\r{}   ", progress_bar(done, total, &label));
                let _ = std::io::stderr().flush();
            }
        };
        let audit = Audit {
            settings: &settings,
            client: &client,
            target: &target,
            fix,
            stop: &stop,
        };
        let result = audit
            .run(&mut conn, Memory::new(target.provider), None, &mut bar)
            .await;
        let _ = targets::unlock(&conn, id).await;
        if terminal {
            eprintln!();
        }
        match result {
            Ok(report) => reports.push(report),
            Err(e) => {
                eprintln!("store {name} ({id}) could not be audited: {e}");
                failed = true;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&reports))?);
    } else {
        print!("{}", render(&reports, fix));
    }
    let drift = reports.iter().any(|r| r.tally.unrepaired() > 0);
    Ok(if failed || drift {
        ExitCode::from(EXIT_RUNTIME)
    } else {
        ExitCode::SUCCESS
    })
}

/// `{"stores":[{"store_id","name","checked","agree","drifted","held_back",
/// "missing_at_marketplace","unknown_to_database","not_repairable","unknown","repaired",
/// "in_motion","examples":[...]}]}`; a held-back example has `held_until` (RFC 3339).
pub fn to_json(reports: &[StoreReport]) -> Value {
    let stores: Vec<Value> = reports
        .iter()
        .map(|r| {
            let t = &r.tally;
            json!({
                "store_id": r.store_id,
                "name": r.name,
                "checked": t.checked(),
                "agree": t.agree,
                "drifted": t.drifted,
                "held_back": t.held_back,
                "missing_at_marketplace": t.missing_at_marketplace,
                "unknown_to_database": t.unknown_to_database,
                "not_repairable": t.not_repairable,
                "unknown": t.unknown,
                "repaired": t.repaired,
                "in_motion": t.in_motion,
                "examples": r.examples,
            })
        })
        .collect();
    json!({ "stores": stores })
}

/// The human report.
pub fn render(reports: &[StoreReport], fix: bool) -> String {
    let mut out = String::new();
    for r in reports {
        let t = &r.tally;
        out.push_str(&format!(
            "{} ({}, {}): {} listings checked in {} pages, {} reads\n",
            r.name,
            r.store_id,
            r.provider,
            t.checked(),
            r.pages,
            r.reads
        ));
        out.push_str(&format!("  {}\n", t.summary()));
        for e in &r.examples {
            out.push_str(&format!("    {:<22} {}\n", e.kind.as_str(), e.describe()));
        }
    }
    let held: u64 = reports.iter().map(|r| r.tally.held_back).sum();
    if held > 0 {
        let until = reports
            .iter()
            .flat_map(|r| &r.examples)
            .filter_map(|e| e.held_until)
            .max();
        out.push_str(&format!(
            "{held} listing(s) shown lower than the database are held back (an order the database may not have imported yet){}: {}\n",
            until.map(|u| format!(", the examples until {}", u.format("%Y-%m-%dT%H:%M:%SZ"))).unwrap_or_default(),
            if fix {
                "an audit after that repairs those still different"
            } else {
                "an audit with repairs after that repairs those still different"
            }
        ));
    }
    let drifted: Vec<&StoreReport> = reports
        .iter()
        .filter(|r| r.tally.unrepaired() > 0)
        .collect();
    if drifted.is_empty() {
        out.push_str(if fix {
            "no drift left: every drifted listing has a repair enqueued (the running service pushes it)\n"
        } else {
            "no drift\n"
        });
    } else {
        out.push_str(&format!(
            "drift remains in {} store(s); `stocksync reconcile --fix` enqueues the repairs\n",
            drifted.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::Provider;
    use crate::reconcile::{Finding, Kind, Tally};

    #[test]
    fn json_has_the_documented_shape() {
        let report = StoreReport {
            store_id: Uuid::from_u128(7),
            name: "Shop".into(),
            provider: Provider::Trendyol,
            tally: Tally {
                agree: 5,
                drifted: 2,
                repaired: 1,
                in_motion: 1,
                held_back: 1,
                ..Tally::default()
            },
            examples: vec![
                Finding {
                    kind: Kind::Drifted,
                    product_id: Some(Uuid::from_u128(9)),
                    key: "BC-1".into(),
                    marketplace: Some(7),
                    database: Some(3),
                    detail: None,
                    repaired: true,
                    held_until: None,
                },
                Finding {
                    kind: Kind::HeldBack,
                    product_id: Some(Uuid::from_u128(10)),
                    key: "BC-2".into(),
                    marketplace: Some(4),
                    database: Some(5),
                    detail: None,
                    repaired: false,
                    held_until: chrono::DateTime::from_timestamp(1_800_000_000, 0),
                },
            ],
            pages: 1,
            reads: 2,
            ambiguous: 0,
        };
        let v = to_json(std::slice::from_ref(&report));
        let store = &v["stores"][0];
        let mut keys: Vec<&String> = store.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "agree",
                "checked",
                "drifted",
                "examples",
                "held_back",
                "in_motion",
                "missing_at_marketplace",
                "name",
                "not_repairable",
                "repaired",
                "store_id",
                "unknown",
                "unknown_to_database"
            ]
        );
        assert_eq!(store["checked"], 9);
        assert_eq!(store["examples"][0]["kind"], "drifted");
        assert_eq!(store["examples"][0]["marketplace"], 7);
        assert!(store["examples"][0].get("held_until").is_none());
        assert_eq!(store["examples"][1]["kind"], "held_back");
        assert_eq!(store["examples"][1]["held_until"], "2027-01-15T08:00:00Z");
        let text = render(&[report], false);
        assert!(text.contains("drift remains in 1 store"), "{text}");
        assert!(text.contains("BC-1"), "{text}");
        assert!(
            text.contains("BC-2: marketplace 4, database 5, held back until 2027-01-15T08:00:00Z"),
            "{text}"
        );
        assert!(text.contains("1 listing(s) shown lower"), "{text}");
    }
}
