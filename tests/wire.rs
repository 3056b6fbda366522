//! The replication connection against real servers: SCRAM-SHA-256, MD5, trust, TLS with
//! `sslmode=require` and `verify-full`, and clear errors for wrong passwords.

use stocksync::db::DbConfig;
use stocksync::localpg::{ClusterOptions, LocalCluster};
use stocksync::replication::wire::{ReplicationConnection, WireError};

fn cluster_with_password_users(tls: bool) -> LocalCluster {
    let cluster = LocalCluster::start(ClusterOptions {
        hba_lines: vec![
            "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
            "hostssl all tls_user 127.0.0.1/32 scram-sha-256".into(),
        ],
        tls,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'sčram pass'; \
             CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 'tls-pass'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-pass';",
        )
        .expect("roles");
    cluster
}

async fn identify(url: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
    let config = DbConfig::from_url(url).expect("url");
    let mut conn = ReplicationConnection::connect(&config).await?;
    assert!(conn.server_version_num >= 100000, "server version parsed");
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    conn.close().await;
    Ok(rows)
}

#[tokio::test]
async fn authenticates_with_scram_md5_and_trust() {
    let cluster = cluster_with_password_users(false);
    let port = cluster.port();
    for url in [
        format!(
            "postgres://scram_user:s%C4%8Dram%20pass@127.0.0.1:{port}/postgres?sslmode=disable"
        ),
        format!("postgres://md5_user:md5-pass@127.0.0.1:{port}/postgres?sslmode=disable"),
        format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
    ] {
        let rows = identify(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        // IDENTIFY_SYSTEM: systemid, timeline, xlogpos, dbname
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][3].as_deref(), Some("postgres"));
    }
    let err = identify(&format!(
        "postgres://scram_user:wrong@127.0.0.1:{port}/postgres"
    ))
    .await
    .unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password must not be echoed: {err}"
    );
    let err = identify(&format!("postgres://scram_user@127.0.0.1:{port}/postgres"))
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::PasswordRequired), "{err}");
    // This server offers no TLS: sslmode=require must not fall back to plain text.
    let err = identify(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, WireError::TlsNotOffered), "{err}");
}

#[tokio::test]
async fn tls_require_and_verify_full() {
    let cluster = cluster_with_password_users(true);
    let port = cluster.port();
    let ca = cluster.tls_root_cert();
    let ca = ca.display();
    // hostssl: only reachable over TLS.
    identify(&format!(
        "postgres://tls_user:tls-pass@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .expect("sslmode=require");
    identify(&format!(
        "postgres://tls_user:tls-pass@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    ))
    .await
    .expect("sslmode=verify-full with the CA");
    // Without the CA the self-signed certificate is refused.
    let err = identify(&format!(
        "postgres://tls_user:tls-pass@localhost:{port}/postgres?sslmode=verify-full"
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, WireError::Tls(_)), "{err}");
    // The query pool honours the same sslmode.
    let config = DbConfig::from_url(&format!(
        "postgres://tls_user:tls-pass@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    ))
    .unwrap();
    let client = config.connect().await.expect("pool-side TLS connection");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}
