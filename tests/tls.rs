//! TLS trust anchors and authentication policy against real servers, for both connections
//! (the replication connection of `replication::wire` and the tokio-postgres query
//! connections of `db`), which are built from one `DbConfig`.
//!
//! The server certificates are issued by test CAs (openssl CLI). CA "A" signs the servers and
//! is also the system trust store of this process (`SSL_CERT_FILE`, set before any TLS is set
//! up), so a test can tell "trusted because it is the configured anchor" from "trusted because
//! the system trusts it".

use std::sync::OnceLock;

use stocksync::db::{AuthError, DbConfig, DbError};
use stocksync::localpg::{ClusterOptions, LocalCluster, TestCa};
use stocksync::replication::wire::{ReplicationConnection, WireError};

struct Cas {
    a: TestCa,
    b: TestCa,
}

/// CA A (also the process's system store) and CA B.
fn cas() -> &'static Cas {
    static CAS: OnceLock<Cas> = OnceLock::new();
    CAS.get_or_init(|| {
        let a = TestCa::new("stocksync test CA A").expect("CA A");
        let b = TestCa::new("stocksync test CA B").expect("CA B");
        // Before any TLS connector exists: OpenSSL and native-tls read it once.
        std::env::set_var("SSL_CERT_FILE", &a.cert);
        std::env::remove_var("SSL_CERT_DIR");
        Cas { a, b }
    })
}

/// A TLS cluster whose certificate (for `localhost` only) is issued by CA A, with users for
/// each authentication method.
fn cluster() -> LocalCluster {
    let cluster = LocalCluster::start(ClusterOptions {
        hba_lines: vec![
            "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
            "host all pw_user 127.0.0.1/32 password".into(),
            "host replication scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host replication md5_user 127.0.0.1/32 md5".into(),
            "host replication pw_user 127.0.0.1/32 password".into(),
        ],
        tls_issuer: Some(cas().a.clone()),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-pass'; \
             CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'pw-pass'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-pass';",
        )
        .expect("roles");
    cluster
}

/// Both connections to `url`: the replication connection and a query connection (`SELECT 1`).
async fn both(url: &str) -> (Result<(), WireError>, Result<(), DbError>) {
    let config = DbConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let wire = match ReplicationConnection::connect(&config).await {
        Ok(mut conn) => {
            let r = conn.simple_query("IDENTIFY_SYSTEM").await.map(|_| ());
            conn.close().await;
            r
        }
        Err(e) => Err(e),
    };
    let query = match config.connect().await {
        Ok(client) => {
            client.query_one("SELECT 1", &[]).await.expect("SELECT 1");
            Ok(())
        }
        Err(e) => Err(e),
    };
    // The pool opens its connections the same way.
    let pool = config.pool(1).expect("pool");
    let pooled = pool.get().await;
    assert_eq!(
        pooled.is_ok(),
        query.is_ok(),
        "{url}: pool and dedicated connection disagree ({:?})",
        pooled.err()
    );
    (wire, query)
}

async fn assert_both_connect(url: &str) {
    let (wire, query) = both(url).await;
    wire.unwrap_or_else(|e| panic!("replication connection to {url}: {e}"));
    query.unwrap_or_else(|e| panic!("query connection to {url}: {e}"));
}

async fn assert_both_refused(url: &str) -> (WireError, DbError) {
    let (wire, query) = both(url).await;
    let wire = wire.expect_err(&format!("replication connection to {url} must fail"));
    let query = query.expect_err(&format!("query connection to {url} must fail"));
    (wire, query)
}

#[tokio::test]
async fn sslrootcert_is_the_only_trust_anchor() {
    let cas = cas();
    let cluster = cluster();
    let port = cluster.port();
    let url = |host: &str, query: String| {
        format!("postgres://scram_user:scram-pass@{host}:{port}/postgres?{query}")
    };
    let (a, b) = (cas.a.cert.display(), cas.b.cert.display());

    // CA B is named: the server's CA A does not pass, although the system store trusts A.
    for mode in ["verify-ca", "verify-full", "require", "prefer"] {
        let (wire, query) =
            assert_both_refused(&url("localhost", format!("sslmode={mode}&sslrootcert={b}"))).await;
        assert!(matches!(wire, WireError::Tls(_)), "{mode}: {wire}");
        assert!(matches!(query, DbError::Connect { .. }), "{mode}: {query}");
        assert!(!query.to_string().contains("scram-pass"), "{query}");
    }
    // CA A named: verify-ca checks the chain only, verify-full the name too.
    assert_both_connect(&url(
        "127.0.0.1",
        format!("sslmode=verify-ca&sslrootcert={a}"),
    ))
    .await;
    assert_both_connect(&url(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={a}"),
    ))
    .await;
    // 127.0.0.1 is not in the certificate (it names `localhost` only).
    let (wire, _) = assert_both_refused(&url(
        "127.0.0.1",
        format!("sslmode=verify-full&sslrootcert={a}"),
    ))
    .await;
    assert!(matches!(wire, WireError::Tls(_)), "{wire}");
    // sslrootcert=system: the system store (here CA A through SSL_CERT_FILE), verify-full.
    assert_both_connect(&url("localhost", "sslrootcert=system".into())).await;
    assert_both_refused(&url("127.0.0.1", "sslrootcert=system".into())).await;
    // A bundle naming B then A trusts A.
    let dir = cluster.dir().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("bundle.pem");
    let pem = [
        std::fs::read(&cas.b.cert).unwrap(),
        std::fs::read(&cas.a.cert).unwrap(),
    ]
    .concat();
    std::fs::write(&bundle, pem).unwrap();
    assert_both_connect(&url(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={}", bundle.display()),
    ))
    .await;
    // require without any anchor encrypts without checking (libpq's require).
    if stocksync::db::tls::default_root_file().is_none() {
        assert_both_connect(&url("127.0.0.1", "sslmode=require".into())).await;
        let err = DbConfig::from_url(&url("localhost", "sslmode=verify-full".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert"), "{err}");
    }
}

#[tokio::test]
async fn channel_binding_on_both_connections() {
    let cas = cas();
    let cluster = cluster();
    let port = cluster.port();
    let a = cas.a.cert.display();
    let tls = format!("sslmode=verify-full&sslrootcert={a}");
    let url = |user: &str, query: &str| {
        format!("postgres://{user}@localhost:{port}/postgres?{tls}&{query}")
    };
    // SCRAM over TLS binds the channel: required, preferred (the default) and disabled.
    for cb in ["require", "prefer", "disable"] {
        assert_both_connect(&url(
            "scram_user:scram-pass",
            &format!("channel_binding={cb}"),
        ))
        .await;
    }
    assert_both_connect(&url("scram_user:scram-pass", "")).await;
    // Without TLS SCRAM cannot bind: prefer goes on, require is refused before connecting.
    let plain =
        format!("postgres://scram_user:scram-pass@localhost:{port}/postgres?sslmode=disable");
    assert_both_connect(&plain).await;
    assert!(matches!(
        DbConfig::from_url(&format!("{plain}&channel_binding=require")),
        Err(DbError::ChannelBindingWithoutTls(_))
    ));
    // MD5, cleartext and trust cannot bind: require refuses them.
    for user in ["md5_user:md5-pass", "pw_user:pw-pass", "postgres"] {
        let (wire, query) = assert_both_refused(&url(user, "channel_binding=require")).await;
        assert!(
            matches!(wire, WireError::Auth(AuthError::ChannelBindingRequired(_))),
            "{user}: {wire}"
        );
        assert!(
            query.to_string().contains("channel binding"),
            "{user}: {query}"
        );
        assert!(
            query.is_permanent() || query.sqlstate().is_none(),
            "{query}"
        );
        assert_both_connect(&url(user, "channel_binding=prefer")).await;
    }
}

#[tokio::test]
async fn require_auth_on_both_connections() {
    let cluster = cluster();
    let port = cluster.port();
    let url = |user: &str, require: &str| {
        format!(
            "postgres://{user}@127.0.0.1:{port}/postgres?sslmode=disable&require_auth={require}"
        )
    };
    let (scram, md5, pw, trust) = (
        "scram_user:scram-pass",
        "md5_user:md5-pass",
        "pw_user:pw-pass",
        "postgres",
    );
    let cases: &[(&str, &[&str], &[&str])] = &[
        // require_auth, users let in, users refused
        ("scram-sha-256", &[scram], &[md5, pw, trust]),
        ("!password", &[scram, md5, trust], &[pw]),
        ("!password,!md5", &[scram, trust], &[md5, pw]),
        ("md5,password", &[md5, pw], &[scram, trust]),
        ("none", &[trust], &[scram, md5, pw]),
        ("!none", &[scram, md5, pw], &[trust]),
        ("scram-sha-256,none", &[scram, trust], &[md5, pw]),
    ];
    for (require, allowed, refused) in cases {
        for user in *allowed {
            assert_both_connect(&url(user, require)).await;
        }
        for user in *refused {
            let (wire, query) = assert_both_refused(&url(user, require)).await;
            let expected_wire = matches!(
                wire,
                WireError::Auth(
                    AuthError::MethodNotAllowed { .. } | AuthError::NotAuthenticated { .. }
                )
            );
            assert!(expected_wire, "require_auth={require}, {user}: {wire}");
            assert!(
                matches!(
                    query.auth_error(),
                    Some(AuthError::MethodNotAllowed { .. } | AuthError::NotAuthenticated { .. })
                ),
                "require_auth={require}, {user}: {query}"
            );
            assert!(query.is_permanent(), "{query}");
            assert!(!query.to_string().contains("-pass"), "{query}");
        }
    }
}
