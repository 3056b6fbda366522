//! Credentials end to end: keyed fingerprints of refused credentials, and a gateway that
//! echoes them in every spelling.

use std::time::Duration;

use super::hepsiburada::hepsiburada_store;
use super::*;
use crate::common::stack::*;
use crate::common::*;

/// The fingerprint of refused credentials kept in `store_state` is an HMAC keyed with the
/// install's key (`stock_sync.install`), not a bare SHA-256 anyone reading the table could
/// test guesses against. A pause an earlier version wrote (bare SHA-256) is compared by its
/// rule once and rewritten keyed, so the upgrade lifts no pause; changed credentials still
/// lift one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_fingerprints_are_keyed_and_old_ones_are_rewritten() {
    use sha2::{Digest, Sha256};
    use stocksync::stores::{gates, state, Gate};
    let url = fresh_database("delivery_keyed_fp");
    let client = connect(&url).await;
    setup(&url, "delivery_keyed_fp", "delivery_keyed_fp").await;
    let store = uuid();
    hepsiburada_store(&client, store, &[]).await;
    state::read(&client, store, Duration::ZERO).await.unwrap();
    // What versions before 013 stored: hex SHA-256 of the length-prefixed material.
    let bare = |secret: &str| {
        let mut h = Sha256::new();
        h.update(b"stocksync.store-credentials.v1\0");
        for field in [
            &b"HEPSIBURADA"[..],
            HB_MERCHANT.as_bytes(),
            b"nokey",
            secret.as_bytes(),
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let refused = |fingerprint: String| {
        let client = &client;
        async move {
            let pause = state::Pause {
                kind: state::PauseKind::Credentials,
                reason: "credentials refused (401)",
                fingerprint: &fingerprint,
                look_again_after: Duration::ZERO,
                forbidden: false,
            };
            state::pause(client, store, &pause).await.unwrap();
        }
    };
    let stored = || async {
        let row = client
            .query_one(
                "SELECT paused_credentials FROM stock_sync.store_state WHERE store_id = $1",
                &[&store],
            )
            .await
            .unwrap();
        row.get::<_, Option<String>>(0)
    };
    let user_agents = stocksync::marketplace::UserAgents {
        hepsiburada_default: Some("test_dev".into()),
        ..Default::default()
    };
    let fingerprint_key = stocksync::stores::state::fingerprint_key(&client)
        .await
        .unwrap();
    let settings = gates::GateSettings {
        min_send_interval: Duration::ZERO,
        user_agents: &user_agents,
        fingerprint_key: &fingerprint_key,
    };
    // An upgrade: the pause names today's credentials in the old form. It holds, and its
    // fingerprint is rewritten keyed.
    refused(bare("hb-secret")).await;
    assert!(matches!(
        gates::check(&client, store, settings).await.unwrap(),
        Gate::Shut
    ));
    let keyed = stored().await.expect("still paused");
    assert!(keyed.starts_with("hmac-sha256:"), "{keyed}");
    assert!(!keyed.contains(&bare("hb-secret")));
    let key: Vec<u8> = client
        .query_one("SELECT fingerprint_key FROM stock_sync.install", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(key.len(), 32);
    // The keyed form holds the pause too.
    assert!(matches!(
        gates::check(&client, store, settings).await.unwrap(),
        Gate::Shut
    ));
    assert_eq!(stored().await.as_deref(), Some(keyed.as_str()));
    // Another install's key gives another fingerprint: the same row no longer matches.
    client
        .execute(
            "UPDATE stock_sync.install SET fingerprint_key = $1",
            &[&vec![9u8; 32]],
        )
        .await
        .unwrap();
    // Read as a process of that install would (the dispatcher reads it once).
    let other_key = stocksync::stores::state::fingerprint_key(&client)
        .await
        .unwrap();
    let settings = gates::GateSettings {
        fingerprint_key: &other_key,
        ..settings
    };
    assert!(matches!(
        gates::check(&client, store, settings).await.unwrap(),
        Gate::Open(_)
    ));
    // An old-form pause of credentials since changed lifts.
    refused(bare("the-old-secret")).await;
    assert!(matches!(
        gates::check(&client, store, settings).await.unwrap(),
        Gate::Open(_)
    ));
    assert_eq!(stored().await, None);
}

/// A gateway echoing the credentials in every spelling (JSON `\uXXXX` and `\/`, lower-case
/// percent hex, form `+`, URL-safe base64, base64 of the secret alone, `Bearer`), with filler
/// putting the secret across the 1000-character cut of an outcome's message: nothing of
/// them reaches the API log, `store_state`, the queue or `status`, and the body of the 401 is
/// not kept at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_credentials_leak_nowhere_end_to_end() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    const KEY: &str = "k3y+Alpha/Beta~z";
    const SECRET: &str = "s3cr3t+v@lue/with space~é";
    let s = seed_ids();
    let mut config = mock_config();
    config.accounts[0] = MockAccount::trendyol(TRENDYOL_SELLER, KEY, SECRET);
    let stack = start("delivery_echo", config, &[], async |c: &Client| {
        load_seed(c, &s).await;
        c.execute(
            "UPDATE stores SET api_key = $2, api_secret = $3 WHERE id = $1",
            &[&s.trendyol, &KEY, &SECRET],
        )
        .await
        .unwrap();
    })
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "SET-001", 15).await;
    let half = |t: &str| t.chars().take(t.chars().count() / 2).collect::<String>();
    let percent = |t: &str| {
        t.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02x}"),
            })
            .collect::<String>()
    };
    let escaped = |t: &str| {
        t.encode_utf16()
            .map(|u| format!("\\u{u:04X}"))
            .collect::<String>()
    };
    let forms = [
        half(SECRET),
        half(KEY),
        percent(SECRET),
        half(&escaped(SECRET)),
        STANDARD.encode(SECRET),
        URL_SAFE_NO_PAD.encode(SECRET),
        URL_SAFE_NO_PAD.encode(format!("{KEY}:{SECRET}")),
        STANDARD.encode(format!("{KEY}:{SECRET}")),
    ];
    let prefix = "request refused by the gateway for ".chars().count();
    // The outcome's message is cut at 1000 characters, 14 into the secret: a cut made before
    // masking keeps more than its first half.
    let padding = 1000 - prefix - KEY.chars().count() - 1 - 14;
    let mut quantity = 20;
    for status in [400u16, 401] {
        mock.set_faults(Faults {
            status: Some(status),
            echo: stocksync::mock::EchoMode {
                encodings: true,
                padding,
            },
            scope: stocksync::mock::FaultScope::Push,
            ..Faults::default()
        });
        quantity += 1;
        stack
            .exec(
                "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3",
                &[&quantity, &s.eldiven, &s.trendyol],
            )
            .await;
        eventually(
            Duration::from_secs(20),
            "the echoing answer is in the API log",
            || async {
                count(
                    &stack.client,
                    "SELECT count(*) FROM stock_sync.api_log WHERE store_id = $1 AND status_code = $2",
                    &[&s.trendyol, &i32::from(status)],
                )
                .await
                    > 0
            },
        )
        .await;
    }
    mock.set_faults(Faults::default());
    let mut texts: Vec<String> = Vec::new();
    for sql in [
        "SELECT concat_ws(' ', request_body, response_body, error_message) FROM stock_sync.api_log",
        "SELECT concat_ws(' ', last_error, paused_reason) FROM stock_sync.store_state",
        "SELECT coalesce(last_error, '') FROM stock_sync.queue",
    ] {
        for row in stack.client.query(sql, &[]).await.unwrap() {
            texts.push(row.get(0));
        }
    }
    let status = stocksync::ops::status::read(&stack.client, "delivery_echo")
        .await
        .unwrap();
    texts.push(serde_json::to_string(&status).unwrap());
    let mut saw_message = false;
    for text in &texts {
        saw_message |= text.contains("request refused by the gateway");
        for form in &forms {
            assert!(!text.contains(form.as_str()), "{form:?} in {text}");
        }
    }
    assert!(saw_message, "the (masked) reason is kept: {texts:#?}");
    let kept_401: Vec<String> = stack
        .client
        .query(
            "SELECT response_body FROM stock_sync.api_log WHERE status_code = 401",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !kept_401.is_empty() && kept_401.iter().all(|b| !b.contains("gateway")),
        "a 401 body is not kept: {kept_401:?}"
    );
    stack.stop().await;
}
