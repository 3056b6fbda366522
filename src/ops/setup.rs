//! `stocksync setup` / `teardown` and the preflight checks.
//!
//! Setup is a plan of SQL statements computed from what the database already has, so it is
//! idempotent and `--print-sql` can show exactly what would run: pending migrations of the
//! `stock_sync` schema (files `sql/NNN_*.sql`, each in its own transaction and recorded in
//! `stock_sync.schema_migrations`), `REPLICA IDENTITY FULL` on the two tables, the
//! publication, and the pgoutput slot.

use tokio_postgres::Client;

/// Numbered migrations of the `stock_sync` schema, in order. Numbers may leave gaps (each is
/// applied when it is missing, whatever the others).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "capture", include_str!("../../sql/001_capture.sql")),
    (2, "delivery", include_str!("../../sql/002_delivery.sql")),
    (
        3,
        "capture_batches",
        include_str!("../../sql/003_capture_batches.sql"),
    ),
    (
        4,
        "fenced_claims",
        include_str!("../../sql/004_fenced_claims.sql"),
    ),
    (
        5,
        "stream_staging",
        include_str!("../../sql/005_stream_staging.sql"),
    ),
    (
        6,
        "live_accounts",
        include_str!("../../sql/006_live_accounts.sql"),
    ),
    (7, "reconcile", include_str!("../../sql/007_reconcile.sql")),
    (
        8,
        "queue_indexes",
        include_str!("../../sql/008_queue_indexes.sql"),
    ),
    (
        9,
        "listing_keys",
        include_str!("../../sql/009_listing_keys.sql"),
    ),
    (10, "held_back", include_str!("../../sql/010_held_back.sql")),
    (
        11,
        "unknown_outcomes",
        include_str!("../../sql/011_unknown_outcomes.sql"),
    ),
    (
        13,
        "install_key",
        include_str!("../../sql/013_install_key.sql"),
    ),
];

/// The application tables stocksync reads through the slot.
pub const PUBLISHED_TABLES: [&str; 2] = ["product_stores", "product_set_items"];

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Refused(String),
}

/// One step of the plan.
#[derive(Debug, Clone)]
pub struct Step {
    pub description: String,
    pub sql: String,
    /// Migrations run inside a transaction; slot creation cannot.
    pub transactional: bool,
}

/// What the database has, as far as setup is concerned.
#[derive(Debug, Default)]
struct Observed {
    schema_exists: bool,
    applied_migrations: Vec<i32>,
    tables_present: Vec<String>,
    identity_full: Vec<String>,
    publication_exists: bool,
    publication_tables: Vec<String>,
    slot_plugin: Option<String>,
    /// Database of the slot when it belongs to another database (slot names are cluster-wide).
    slot_elsewhere: Option<String>,
    /// `server_version_num`.
    server_version: i32,
}

/// Logical slots can survive a failover from PostgreSQL 17 on: created with `failover`, a
/// standby with `sync_replication_slots = on` keeps a copy.
pub const FAILOVER_SLOTS_FROM: i32 = 170_000;

async fn server_version(client: &Client) -> Result<i32, SetupError> {
    let v: String = client
        .query_one("SHOW server_version_num", &[])
        .await?
        .get(0);
    Ok(v.trim().parse().unwrap_or(0))
}

async fn observe(client: &Client, slot: &str, publication: &str) -> Result<Observed, SetupError> {
    let schema_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'stock_sync')",
            &[],
        )
        .await?
        .get(0);
    let mut o = Observed {
        schema_exists,
        server_version: server_version(client).await?,
        ..Observed::default()
    };
    let has_table: bool = client
        .query_one(
            "SELECT to_regclass('stock_sync.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if has_table {
        o.applied_migrations = client
            .query("SELECT version FROM stock_sync.schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    for row in client
        .query(
            "SELECT c.relname, c.relreplident = 'f' FROM pg_class c \
             WHERE c.oid IN (to_regclass('product_stores'), to_regclass('product_set_items'))",
            &[],
        )
        .await?
    {
        let name: String = row.get(0);
        if row.get::<_, bool>(1) {
            o.identity_full.push(name.clone());
        }
        o.tables_present.push(name);
    }
    o.publication_exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    o.publication_tables = client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(row) = client
        .query_opt(
            "SELECT plugin::text, database::text, database = current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
    {
        if row.get::<_, Option<bool>>(2) == Some(true) {
            o.slot_plugin = row.get(0);
        } else {
            o.slot_elsewhere = Some(
                row.get::<_, Option<String>>(1)
                    .unwrap_or_else(|| "(physical slot)".into()),
            );
        }
    }
    Ok(o)
}

/// The steps setup would run now. `slot` and `publication` are validated identifiers.
pub async fn plan(client: &Client, slot: &str, publication: &str) -> Result<Vec<Step>, SetupError> {
    let o = observe(client, slot, publication).await?;
    for table in PUBLISHED_TABLES {
        if !o.tables_present.iter().any(|t| t == table) {
            return Err(SetupError::Refused(format!(
                "table {table} does not exist in this database (search_path); stocksync reads the \
                 application's product_stores and product_set_items — check DATABASE_URL"
            )));
        }
    }
    if let Some(database) = &o.slot_elsewhere {
        return Err(SetupError::Refused(format!(
            "replication slot {slot:?} already exists for database {database:?}; slot names are \
             cluster-wide: choose another STOCKSYNC_SLOT for this database"
        )));
    }
    if let Some(plugin) = o.slot_plugin.as_deref().filter(|p| *p != "pgoutput") {
        return Err(SetupError::Refused(format!(
            "replication slot {slot:?} exists with plugin {plugin:?}; drop it or choose another STOCKSYNC_SLOT"
        )));
    }
    Ok(full_plan(slot, publication, Some(o.server_version))
        .into_iter()
        .filter(|step| step_needed(step, &o))
        .collect())
}

/// Every step, as on an empty database of `server_version` (`None`: unknown, what
/// `--print-sql` shows when it cannot connect).
pub fn full_plan(slot: &str, publication: &str, server_version: Option<i32>) -> Vec<Step> {
    // A separate step, skipped when the schema exists: even CREATE SCHEMA IF NOT EXISTS
    // needs CREATE on the database, which a least-privilege role that was given its schema
    // by the DBA does not have.
    let mut steps = vec![Step {
        description: "schema stock_sync".into(),
        sql: "CREATE SCHEMA stock_sync;".into(),
        transactional: true,
    }];
    for (version, name, sql) in MIGRATIONS {
        steps.push(Step {
            description: format!("migration {version:03} {name}"),
            sql: format!(
                "{}\nINSERT INTO stock_sync.schema_migrations (version, name) VALUES ({version}, '{name}');",
                sql.trim_end()
            ),
            transactional: true,
        });
    }
    for table in PUBLISHED_TABLES {
        steps.push(Step {
            description: format!("replica identity of {table}"),
            sql: format!("ALTER TABLE {table} REPLICA IDENTITY FULL;"),
            transactional: true,
        });
    }
    steps.push(Step {
        description: format!("publication {publication}"),
        sql: format!(
            "CREATE PUBLICATION \"{publication}\" FOR TABLE product_stores, product_set_items;"
        ),
        transactional: true,
    });
    for table in PUBLISHED_TABLES {
        steps.push(Step {
            description: format!("publication {publication} includes {table}"),
            sql: format!("ALTER PUBLICATION \"{publication}\" ADD TABLE {table};"),
            transactional: true,
        });
    }
    // Arguments: name, plugin, temporary, two-phase, failover (17+).
    let plain = format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');");
    let failover = format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput', false, false, true);"
    );
    steps.push(match server_version {
        Some(v) if v >= FAILOVER_SLOTS_FROM => Step {
            description: format!(
                "replication slot {slot} (failover = true: a standby with sync_replication_slots \
                 keeps a copy)"
            ),
            sql: failover,
            transactional: false,
        },
        Some(_) => Step {
            description: format!(
                "replication slot {slot} (this server keeps it on the primary only: no failover \
                 slots before PostgreSQL 17)"
            ),
            sql: plain,
            transactional: false,
        },
        None => Step {
            description: format!("replication slot {slot}"),
            sql: format!(
                "-- On PostgreSQL 17 and later, with failover = true (survives a failover):\n\
                 -- {failover}\n{plain}"
            ),
            transactional: false,
        },
    });
    steps
}

/// Whether `synchronous_standby_names` makes a walsender named `application_name` a
/// synchronous standby: `*`, or the name among its standbys (any of the `FIRST n (...)`,
/// `ANY n (...)` and plain-list forms; names compare case-insensitively, quoted or not).
pub fn names_a_synchronous_standby(
    synchronous_standby_names: &str,
    application_name: &str,
) -> bool {
    synchronous_standby_names
        .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .map(|name| name.trim_matches('"'))
        .filter(|name| !name.is_empty())
        .filter(|name| {
            !name.eq_ignore_ascii_case("first")
                && !name.eq_ignore_ascii_case("any")
                && !name.chars().all(|c| c.is_ascii_digit())
        })
        .any(|name| name == "*" || name.eq_ignore_ascii_case(application_name))
}

/// A server whose `synchronous_standby_names` includes stocksync's own walsender makes
/// every commit wait for stocksync to confirm it, while stocksync's capture waits for its
/// own commits: capture and the application hang. A sentence naming the fix, or `None`.
pub async fn synchronous_standby_problem(
    client: &Client,
    application_name: &str,
) -> Result<Option<String>, SetupError> {
    let names: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await?
        .get(0);
    Ok(names_a_synchronous_standby(&names, application_name).then(|| {
        format!(
            "synchronous_standby_names = '{names}' makes stocksync's replication connection \
             (application_name {application_name:?}) a synchronous standby: every commit would wait \
             for stocksync, and stocksync for its own commits, so capture and the application \
             hang; name the physical standbys there explicitly instead of '*' (or give stocksync \
             another application_name in DATABASE_URL)"
        )
    }))
}

/// Whether the slot would survive a failover, as warnings (never a refusal: a DBA may run
/// without a standby): before 17 logical slots live on the primary only; from 17 the slot
/// needs `failover`, and the primary should hold it back for the failover standbys
/// (`synchronized_standby_slots`), or a standby's copy may lag behind what was confirmed.
pub async fn failover_warnings(client: &Client, slot: &str) -> Result<Vec<String>, SetupError> {
    let version = server_version(client).await?;
    if version < FAILOVER_SLOTS_FROM {
        return Ok(vec![format!(
            "PostgreSQL {} keeps logical replication slots on the primary only: after a \
             failover slot {slot:?} is gone and stocksync stops (exit 3) until `stocksync setup` \
             and `stocksync resync` are run; PostgreSQL 17 and later can keep it on a standby",
            version / 10_000
        )]);
    }
    let Some(row) = client
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
    else {
        return Ok(Vec::new());
    };
    let mut warnings = Vec::new();
    if !row.get::<_, bool>(0) {
        warnings.push(format!(
            "replication slot {slot:?} was created without failover = true: it will not survive \
             a failover; recreate it (`stocksync teardown`, `stocksync setup`, `stocksync \
             resync`) or run ALTER_REPLICATION_SLOT {slot} (FAILOVER true) on a replication \
             connection"
        ));
    } else {
        let standbys: String = client
            .query_one("SHOW synchronized_standby_slots", &[])
            .await?
            .get(0);
        if standbys.trim().is_empty() {
            warnings.push(format!(
                "synchronized_standby_slots is empty on this server: a standby's copy of slot \
                 {slot:?} may lag behind what stocksync confirmed; name the failover standbys' \
                 physical slots there (and set sync_replication_slots = on, hot_standby_feedback \
                 = on on the standbys)"
            ));
        }
    }
    Ok(warnings)
}

fn step_needed(step: &Step, o: &Observed) -> bool {
    let d = step.description.as_str();
    if d == "schema stock_sync" {
        return !o.schema_exists;
    }
    if let Some(rest) = d.strip_prefix("migration ") {
        let version: i32 = rest[..3].parse().unwrap_or(0);
        return !o.applied_migrations.contains(&version);
    }
    if let Some(table) = d.strip_prefix("replica identity of ") {
        return !o.identity_full.iter().any(|t| t == table);
    }
    if let Some((_, table)) = d.split_once(" includes ") {
        // Only when the publication exists without the table (creation lists both).
        return o.publication_exists && !o.publication_tables.iter().any(|t| t == table);
    }
    if d.starts_with("publication ") {
        return !o.publication_exists;
    }
    if d.starts_with("replication slot ") {
        return o.slot_plugin.is_none();
    }
    true
}

/// Runs the plan.
pub async fn apply(client: &Client, steps: &[Step]) -> Result<(), SetupError> {
    for step in steps {
        tracing::info!(step = %step.description, "setup");
        if step.transactional {
            client
                .batch_execute(&format!("BEGIN;\n{}\nCOMMIT;", step.sql))
                .await
                .map_err(|e| {
                    SetupError::Refused(format!(
                        "{} failed: {}",
                        step.description,
                        crate::db::describe(&e)
                    ))
                })?;
        } else {
            client.batch_execute(&step.sql).await.map_err(|e| {
                SetupError::Refused(format!(
                    "{} failed: {}",
                    step.description,
                    crate::db::describe(&e)
                ))
            })?;
        }
    }
    Ok(())
}

/// Renders steps as a script a DBA can read (and run with psql).
pub fn render(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "-- stocksync setup: nothing to do, everything is in place.\n".into();
    }
    let mut out =
        String::from("-- stocksync setup: the statements below would run, in this order.\n");
    for step in steps {
        out.push_str(&format!(
            "\n-- {}\n{}\n",
            step.description,
            step.sql.trim_end()
        ));
    }
    out
}

/// The statements `teardown` runs (`purge` also drops the schema).
pub fn teardown_plan(slot: &str, publication: &str, purge: bool) -> Vec<Step> {
    let mut steps = vec![
        Step {
            description: format!("drop replication slot {slot}"),
            sql: format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';"
            ),
            transactional: false,
        },
        Step {
            description: format!("drop publication {publication}"),
            sql: format!("DROP PUBLICATION IF EXISTS \"{publication}\";"),
            transactional: true,
        },
    ];
    if purge {
        steps.push(Step {
            description: "drop schema stock_sync".into(),
            sql: "DROP SCHEMA IF EXISTS stock_sync CASCADE;".into(),
            transactional: true,
        });
    }
    steps
}

/// One failed preflight check: a sentence naming the fix, and whether it means the slot
/// that stocksync was consuming is gone (changes may be lost: exit code 3, not 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String, pub bool);

impl Problem {
    fn config(message: String) -> Problem {
        Problem(message, false)
    }

    pub fn slot_gone(&self) -> bool {
        self.1
    }
}

/// Preflight: wal_level, publication with both tables, replica identity FULL, slot with
/// pgoutput, schema migrated. `allow_active_slot` is for `run`, which waits for a slot held
/// by a predecessor instead of failing.
pub async fn preflight(
    client: &Client,
    slot: &str,
    publication: &str,
    allow_active_slot: bool,
) -> Result<Vec<Problem>, SetupError> {
    let mut problems = Vec::new();
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        problems.push(Problem::config(format!(
            "wal_level is {wal_level:?}, not \"logical\": set wal_level = logical in postgresql.conf \
             (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        )));
    }
    let o = observe(client, slot, publication).await?;
    for table in PUBLISHED_TABLES {
        if !o.tables_present.iter().any(|t| t == table) {
            problems.push(Problem::config(format!(
                "table {table} is missing: check that DATABASE_URL names the application's database"
            )));
        } else if !o.identity_full.iter().any(|t| t == table) {
            problems.push(Problem::config(format!(
                "table {table} does not have REPLICA IDENTITY FULL: run `stocksync setup` \
                 (or ALTER TABLE {table} REPLICA IDENTITY FULL)"
            )));
        }
    }
    if !o.publication_exists {
        problems.push(Problem::config(format!(
            "publication {publication:?} does not exist: run `stocksync setup` (see `stocksync setup --print-sql`)"
        )));
    } else {
        for table in PUBLISHED_TABLES {
            if !o.publication_tables.iter().any(|t| t == table) {
                problems.push(Problem::config(format!(
                    "publication {publication:?} does not include {table}: run `stocksync setup` \
                     (or ALTER PUBLICATION \"{publication}\" ADD TABLE {table})"
                )));
            }
        }
    }
    // Every migration, not only the last: numbers may leave gaps that are filled later.
    if MIGRATIONS
        .iter()
        .any(|(version, _, _)| !o.applied_migrations.contains(version))
    {
        problems.push(Problem::config(
            "schema stock_sync is missing or not up to date: run `stocksync setup`".into(),
        ));
    }
    match o.slot_plugin.as_deref() {
        None if o.slot_elsewhere.is_some() => problems.push(Problem::config(format!(
            "replication slot {slot:?} belongs to database {:?}, not this one: choose another \
             STOCKSYNC_SLOT (slot names are cluster-wide)",
            o.slot_elsewhere.as_deref().unwrap_or_default()
        ))),
        None => {
            // stocksync consumed the slot when it has a checkpoint for it (migration 1
            // created the checkpoint table).
            let had_checkpoint = o.applied_migrations.contains(&1)
                && crate::queue::read_checkpoint(client, slot).await?.is_some();
            problems.push(if had_checkpoint {
                Problem(
                    format!(
                        "replication slot {slot:?} is gone although stocksync was consuming it \
                         (changes since then may be lost): run `stocksync setup`, then \
                         `stocksync resync` so every listing is sent again"
                    ),
                    true,
                )
            } else {
                Problem::config(format!(
                    "replication slot {slot:?} does not exist: run `stocksync setup` (if it \
                     existed before, run `stocksync resync` afterwards)"
                ))
            })
        }
        Some("pgoutput") => {
            let row = client
                .query_one(
                    "SELECT active, active_pid, wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await?;
            let active: bool = row.get(0);
            let wal_status: Option<String> = row.get(2);
            if wal_status.as_deref() == Some("lost") {
                problems.push(Problem(
                    format!(
                        "replication slot {slot:?} is lost (wal_status = lost): run `stocksync teardown`, \
                         `stocksync setup`, then `stocksync resync`"
                    ),
                    true,
                ));
            }
            if active && !allow_active_slot {
                let pid: Option<i32> = row.get(1);
                problems.push(Problem::config(format!(
                    "replication slot {slot:?} is in use by server process {}: stop the other consumer \
                     (another stocksync, or pg_recvlogical) first",
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                )));
            }
        }
        Some(other) => problems.push(Problem::config(format!(
            "replication slot {slot:?} uses plugin {other:?}: drop it and run `stocksync setup`"
        ))),
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_standby_names_are_read_in_every_form() {
        let names = |s| names_a_synchronous_standby(s, "stocksync");
        assert!(names("*"));
        assert!(names("FIRST 1 (*)"));
        assert!(names("ANY 2 (s1, \"StockSync\", s2)"));
        assert!(names("s1,stocksync"));
        assert!(names_a_synchronous_standby("ANY 1 (*)", "other"));
        assert!(!names(""));
        assert!(!names("FIRST 2 (s1, s2)"));
        assert!(!names("stocksync_standby"));
    }
}
