//! Both connections (the replication connection of `replication::wire` and the query
//! connections of `db`) against hostile stand-in servers on 127.0.0.1: a tokio listener that
//! speaks just enough of the protocol to play a man in the middle. No PostgreSQL is involved:
//! a real server never sends what these do.
//!
//! Each stand-in serves one connection and reports what the client sent it (a password, a
//! SASL mechanism), so a test asserts on what leaked, not only on the error.

use std::path::PathBuf;

use stocksync::db::auth::{message_too_long_in, ssl_answer_error_in, MessageTooLong};
use stocksync::db::{AuthError, DbConfig, DbError};
use stocksync::replication::wire::{ReplicationConnection, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The SSLRequest code (after the length).
const SSL_REQUEST_CODE: [u8; 4] = [0x04, 0xd2, 0x16, 0x2f];

/// A stand-in on a free port: `serve` gets its one connection.
async fn stand_in<F, Fut, T>(serve: F) -> (u16, JoinHandle<T>)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        serve(socket).await
    });
    (port, task)
}

/// One length-prefixed frontend message without a tag (SSLRequest, startup).
async fn read_untagged<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// One tagged frontend message: (tag, body).
async fn read_tagged<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    Ok((tag, read_untagged(s).await?))
}

/// Reads the SSLRequest and answers it with `answer`.
async fn answer_ssl_request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    answer: u8,
) -> std::io::Result<()> {
    let request = read_untagged(s).await?;
    assert_eq!(request, SSL_REQUEST_CODE, "an SSLRequest first");
    s.write_all(&[answer]).await
}

/// Answers the SSLRequest with `X`; if the client goes on in plaintext, asks for a cleartext
/// password. Returns the password that arrived, if any.
async fn x_answering_server(mut s: tokio::net::TcpStream) -> Option<Vec<u8>> {
    let exchange = async {
        answer_ssl_request(&mut s, b'X').await?;
        read_untagged(&mut s).await?; // the startup message
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?; // AuthenticationCleartextPassword
        let (tag, body) = read_tagged(&mut s).await?;
        std::io::Result::Ok((tag == b'p').then_some(body))
    };
    // An error reading means the client hung up: nothing arrived.
    exchange.await.ok().flatten()
}

/// What happened on each connection against its own stand-in.
struct Outcome<T> {
    wire: WireError,
    wire_seen: T,
    query: DbError,
    query_seen: T,
}

/// The replication connection and a query connection to `url`, each against its own
/// stand-in made by `server`; both must fail.
async fn both_against<F, Fut, T>(url: impl Fn(u16) -> String, server: F) -> Outcome<T>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let (port, task) = stand_in(server.clone()).await;
    let config = DbConfig::from_url(&url(port)).expect("url");
    let wire = match ReplicationConnection::connect(&config).await {
        Ok(_) => panic!("the replication connection was accepted"),
        Err(e) => e,
    };
    let wire_seen = task.await.expect("stand-in");
    let (port, task) = stand_in(server).await;
    let config = DbConfig::from_url(&url(port)).expect("url");
    let query = match config.connect().await {
        Ok(_) => panic!("the query connection was accepted"),
        Err(e) => e,
    };
    let query_seen = task.await.expect("stand-in");
    Outcome {
        wire,
        wire_seen,
        query,
        query_seen,
    }
}

/// Item 1: `X` in answer to the SSLRequest fails both connections before anything else is
/// sent, whatever `require_auth` says; the stand-in's request for a cleartext password
/// never gets an answer.
#[tokio::test]
async fn an_odd_answer_to_the_tls_request_fails_both_connections() {
    for params in [
        "sslmode=prefer&require_auth=scram-sha-256",
        "sslmode=prefer",
    ] {
        let url = |port| format!("postgres://app:secret-pw@127.0.0.1:{port}/db?{params}");
        let Outcome {
            wire,
            wire_seen,
            query,
            query_seen,
        } = both_against(url, x_answering_server).await;
        for (connection, password) in [("replication", wire_seen), ("query", query_seen)] {
            assert_eq!(
                password, None,
                "{params}: the {connection} connection sent its password in plaintext"
            );
        }
        match &wire {
            WireError::SslAnswer(e) => assert_eq!(e.byte, b'X'),
            other => panic!("{params}: replication: {other:?}"),
        }
        assert!(
            wire.to_string()
                .contains("answered the TLS request with 0x58, neither S nor N"),
            "{wire}"
        );
        let found = ssl_answer_error_in(&query);
        assert_eq!(
            found.map(|e| e.byte),
            Some(b'X'),
            "{params}: query: {query:?}"
        );
        assert!(
            query.to_string().contains("neither S nor N"),
            "{params}: {query}"
        );
        assert!(!query.to_string().contains("secret-pw"));
    }
}

/// A stand-in that answers the startup (no TLS) with `header` claiming `length` bytes, sends
/// a few bytes of it and closes. With `authenticate`, it first lets the client in (trust),
/// waits for a query and answers that instead.
async fn long_claim_server(mut s: tokio::net::TcpStream, authenticate: bool, length: u32) {
    let exchange = async {
        read_untagged(&mut s).await?; // the startup message
        if authenticate {
            s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await?; // AuthenticationOk
            s.write_all(&[b'Z', 0, 0, 0, 5, b'I']).await?; // ReadyForQuery
            read_tagged(&mut s).await?; // the query
        }
        let tag = if authenticate { b'D' } else { b'R' };
        let mut message = vec![tag];
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(&[0; 10]);
        s.write_all(&message).await?;
        s.shutdown().await
    };
    let _ = exchange.await;
}

/// Item 3: before authentication, a header claiming more than 30,000 bytes (here 30,001 and
/// 2 GiB) fails both connections with a clear error, not a wait for the bytes (nor a buffer
/// of that size).
#[tokio::test]
async fn a_long_message_before_authentication_is_refused() {
    for length in [i32::MAX as u32, 30_001] {
        let url = |port| format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable");
        let Outcome { wire, query, .. } =
            both_against(url, move |s| long_claim_server(s, false, length)).await;
        match &wire {
            WireError::MessageTooLong(MessageTooLong {
                tag: 'R',
                length: claimed,
                limit: 30_000,
                ..
            }) => assert_eq!(*claimed, length),
            other => panic!("{length}: replication: {other:?}"),
        }
        assert!(wire.to_string().contains("before authentication"), "{wire}");
        let found = message_too_long_in(&query);
        assert_eq!(
            found.map(|e| (e.length, e.limit)),
            Some((length, 30_000)),
            "{length}: query: {query:?}"
        );
    }
}

/// Item 3: after authentication, a message claiming more than PostgreSQL can ever build
/// (2 GiB) fails the replication connection at its header.
#[tokio::test]
async fn a_message_longer_than_a_server_can_send_is_refused() {
    let (port, task) = stand_in(|s| long_claim_server(s, true, i32::MAX as u32)).await;
    let config = DbConfig::from_url(&format!(
        "postgres://app@127.0.0.1:{port}/db?sslmode=disable"
    ))
    .expect("url");
    let mut conn = ReplicationConnection::connect(&config)
        .await
        .expect("trust authentication");
    let err = conn
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .expect_err("a 2 GiB row");
    task.await.expect("stand-in");
    match &err {
        WireError::MessageTooLong(e) => {
            assert_eq!((e.tag, e.length), ('D', i32::MAX as u32));
            assert_eq!(e.limit, (1 << 30) + 4);
        }
        other => panic!("{other:?}"),
    }
}

/// A self-signed Ed25519 certificate and its key (PEM), made with the openssl CLI.
fn ed25519_identity() -> native_tls::Identity {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "stocksync-hostile-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "{status:?}");
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(&cert).expect("cert"),
        &std::fs::read(&key).expect("key"),
    )
    .expect("identity");
    let _ = std::fs::remove_dir_all(&dir);
    identity
}

/// Accepts TLS with an Ed25519 certificate, offers SCRAM-SHA-256-PLUS and SCRAM-SHA-256, and
/// returns the mechanism the client chose, if it chose one.
async fn scram_plus_server(
    mut s: tokio::net::TcpStream,
    identity: native_tls::Identity,
) -> Option<String> {
    answer_ssl_request(&mut s, b'S').await.ok()?;
    let acceptor = tokio_native_tls::TlsAcceptor::from(
        native_tls::TlsAcceptor::new(identity).expect("acceptor"),
    );
    let mut tls = acceptor.accept(s).await.ok()?;
    read_untagged(&mut tls).await.ok()?; // the startup message
    let mut sasl = vec![b'R', 0, 0, 0, 42, 0, 0, 0, 10];
    sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    tls.write_all(&sasl).await.ok()?;
    let (tag, body) = read_tagged(&mut tls).await.ok()?;
    let name = body.split(|b| *b == 0).next().unwrap_or_default();
    (tag == b'p').then(|| String::from_utf8_lossy(name).into_owned())
}

/// Item 2: over TLS with an Ed25519 certificate (no `tls-server-end-point` hash), an offer of
/// SCRAM-SHA-256-PLUS is refused by both connections with channel_binding=prefer (the
/// default), naming the algorithm; channel_binding=disable still uses plain SCRAM.
#[tokio::test]
async fn scram_plus_with_an_unbindable_certificate_is_refused() {
    let identity = ed25519_identity();
    let url = |port| format!("postgres://app:secret-pw@127.0.0.1:{port}/db?sslmode=require");
    let server = {
        let identity = identity.clone();
        move |s| scram_plus_server(s, identity.clone())
    };
    let Outcome {
        wire,
        wire_seen,
        query,
        query_seen,
    } = both_against(url, server).await;
    for (connection, mechanism) in [("replication", wire_seen), ("query", query_seen)] {
        assert_eq!(
            mechanism, None,
            "the {connection} connection fell back to unbound SCRAM"
        );
    }
    for error in [
        match &wire {
            WireError::Auth(e) => e.clone(),
            other => panic!("replication: {other:?}"),
        },
        query
            .auth_error()
            .cloned()
            .unwrap_or_else(|| panic!("query: {query:?}")),
    ] {
        assert_eq!(
            error,
            AuthError::ChannelBindingUnavailable {
                algorithm: "Ed25519".into()
            }
        );
        assert!(error.to_string().contains("signed with Ed25519"), "{error}");
    }
    assert!(query.is_permanent(), "a certificate to change, not a retry");
    // channel_binding=disable: plain SCRAM, as asked (the stand-in then hangs up).
    let url = |port| {
        format!(
            "postgres://app:secret-pw@127.0.0.1:{port}/db?sslmode=require&channel_binding=disable"
        )
    };
    let server = move |s| scram_plus_server(s, identity.clone());
    let outcome = both_against(url, server).await;
    for (connection, mechanism) in [
        ("replication", outcome.wire_seen),
        ("query", outcome.query_seen),
    ] {
        assert_eq!(
            mechanism.as_deref(),
            Some("SCRAM-SHA-256"),
            "{connection} with channel_binding=disable"
        );
    }
}
