//! The replication connection against real servers: SCRAM-SHA-256, MD5, trust, TLS with
//! `sslmode=require` and `verify-full`, and clear errors for wrong passwords.

use stocksync::db::{AuthError, DbConfig, DbError};
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
    // Without a CA there is nothing to check against: refused before connecting.
    if stocksync::db::tls::default_root_file().is_none() {
        let err = DbConfig::from_url(&format!(
            "postgres://tls_user:tls-pass@localhost:{port}/postgres?sslmode=verify-full"
        ))
        .unwrap_err();
        assert!(matches!(err, DbError::NoTrustAnchor(_)), "{err}");
    }
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

/// A server that offers SCRAM and then says `AuthenticationOk` at once, before the client could
/// check the server's proof: it never showed it knows the password. Both connections refuse.
#[tokio::test]
async fn authentication_ok_before_scram_finished_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        // One replication connection, then one query connection (plus the pool's).
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // Startup message: length-prefixed.
                let mut len = [0u8; 4];
                if socket.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                if socket.read_exact(&mut rest).await.is_err() {
                    return;
                }
                // AuthenticationSASL offering SCRAM-SHA-256.
                let mechanisms = b"SCRAM-SHA-256\0\0";
                let mut sasl = vec![b'R'];
                sasl.extend_from_slice(&((8 + mechanisms.len()) as u32).to_be_bytes());
                sasl.extend_from_slice(&10u32.to_be_bytes());
                sasl.extend_from_slice(mechanisms);
                let _ = socket.write_all(&sasl).await;
                // The client's SASLInitialResponse ('p').
                let mut tag = [0u8; 5];
                if socket.read_exact(&mut tag).await.is_err() {
                    return;
                }
                let mut rest =
                    vec![0u8; u32::from_be_bytes([tag[1], tag[2], tag[3], tag[4]]) as usize - 4];
                let _ = socket.read_exact(&mut rest).await;
                // AuthenticationOk, ReadyForQuery: "you are in".
                let _ = socket
                    .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'])
                    .await;
                let mut sink = Vec::new();
                let _ = socket.read_to_end(&mut sink).await;
            });
        }
    });
    let config = DbConfig::from_url(&format!(
        "postgres://user:secret@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .unwrap();
    let err = ReplicationConnection::connect(&config)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, WireError::Auth(AuthError::ScramUnfinished)),
        "{err}"
    );
    let Err(err) = config.connect().await else {
        panic!("the query connection must be refused");
    };
    assert!(matches!(err, DbError::Connect { .. }), "{err}");
    server.abort();
}
