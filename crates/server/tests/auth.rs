//! Registration and login: user-id claims (sequential and concurrent), challenge signatures
//! (good, replayed, expired, wrong key, wrong host), what an unauthenticated socket may do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use serde_json::json;
use sotto_client::relay::RelayClient;
use sotto_protocol::signing::authentication_message;
use sotto_protocol::wire::{self, OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson};
use sotto_protocol::{IdentityKeyPair, UserId};
use support::{TerminalUser, TestServer, TestUser, WAIT, client_id, envelope, keys};

async fn connect(server: &TestServer) -> RelayClient {
    RelayClient::connect(&server.url, WAIT).await.unwrap().0
}

fn sign(identity: &IdentityKeyPair, host: &str, user: &str, nonce_b64: &str) -> String {
    let nonce: [u8; 32] = wire::from_b64("nonce", nonce_b64).unwrap().try_into().unwrap();
    let message = authentication_message(host, &UserId::parse(user).unwrap(), &nonce).unwrap();
    wire::b64(identity.sign(&message).as_bytes())
}

#[tokio::test]
async fn a_taken_user_id_is_refused_clearly() {
    let server = TestServer::start().await;
    TestUser::register(&server, "alice").await;
    let (identity, spk, _) = keys(0);
    let client = connect(&server).await;
    let error = client
        .register(&UserId::parse("ALICE").unwrap(), &identity, spk.public(), &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("user_taken"), "ids are normalised before the check");
}

#[tokio::test]
async fn of_concurrent_claims_exactly_one_wins() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let (identity, spk, _) = keys(0);
            let client = RelayClient::connect(&url, WAIT).await.unwrap().0;
            client
                .register(&UserId::parse("contested").unwrap(), &identity, spk.public(), &[])
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(error) => assert_eq!(error.code(), Some("user_taken")),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn invalid_user_ids_are_refused() {
    let server = TestServer::start().await;
    let (identity, spk, _) = keys(0);
    let client = connect(&server).await;
    for bad in ["a", "has space", "_underscore_first", "ünïcode", &"x".repeat(33)] {
        let challenge = client.challenge().await.unwrap();
        let answer: Result<serde_json::Value, _> = client
            .call(
                "user:register-key",
                &json!({
                    "userId": bad,
                    "identity": PublicIdentityJson::from(identity.public()),
                    "signedPrekey": SignedPrekeyJson::from(spk.public()),
                    "signature": challenge.nonce,
                }),
            )
            .await;
        assert_eq!(answer.unwrap_err().code(), Some("invalid_user_id"), "{bad}");
    }
}

#[tokio::test]
async fn login_works_and_a_replayed_challenge_does_not() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let host = server.addr.to_string();
    let client = connect(&server).await;
    let challenge = client.challenge().await.unwrap();
    assert_eq!(challenge.host, host);
    let signature = sign(&alice.identity, &host, "alice", &challenge.nonce);
    let login = json!({ "userId": "alice", "signature": signature });
    let answer: serde_json::Value = client.call("auth:login", &login).await.unwrap();
    assert_eq!(answer["userId"], "alice");

    // The same signature on another connection, which never asked for that nonce.
    let other = connect(&server).await;
    let error = other.call::<_, serde_json::Value>("auth:login", &login).await.unwrap_err();
    assert_eq!(error.code(), Some("no_challenge"));
    // ...or after asking for a fresh challenge: the old signature does not cover it.
    other.challenge().await.unwrap();
    let error = other.call::<_, serde_json::Value>("auth:login", &login).await.unwrap_err();
    assert_eq!(error.code(), Some("authentication_failed"));
    // A challenge is single use even on the connection it was issued to.
    let third = connect(&server).await;
    let challenge = third.challenge().await.unwrap();
    let bad = json!({ "userId": "alice", "signature": sign(&keys(0).0, &host, "alice", &challenge.nonce) });
    assert!(third.call::<_, serde_json::Value>("auth:login", &bad).await.is_err());
    let good = json!({ "userId": "alice", "signature": sign(&alice.identity, &host, "alice", &challenge.nonce) });
    let error = third.call::<_, serde_json::Value>("auth:login", &good).await.unwrap_err();
    assert_eq!(error.code(), Some("no_challenge"));
}

#[tokio::test]
async fn wrong_key_wrong_user_and_wrong_host_are_refused() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    TestUser::register(&server, "bob").await;
    let host = server.addr.to_string();
    let mallory = keys(0).0;
    let cases = [
        ("wrong key", "alice"),
        ("signed for bob", "alice"),
        ("other host", "alice"),
        ("unknown user", "carol"),
    ];
    for (name, user) in cases {
        let client = connect(&server).await;
        let challenge = client.challenge().await.unwrap();
        let signature = match name {
            "wrong key" => sign(&mallory, &host, "alice", &challenge.nonce),
            "signed for bob" => sign(&alice.identity, &host, "bob", &challenge.nonce),
            "other host" => sign(&alice.identity, "evil.example:3000", "alice", &challenge.nonce),
            _ => sign(&alice.identity, &host, "carol", &challenge.nonce),
        };
        let error = client
            .call::<_, serde_json::Value>(
                "auth:login",
                &json!({ "userId": user, "signature": signature }),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("authentication_failed"), "{name}");
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_auth_failures_total{reason=\"bad_signature\"} 3"), "{metrics}");
    assert!(metrics.contains("sotto_auth_failures_total{reason=\"unknown_user\"} 1"), "{metrics}");
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let server = TestServer::start_with(|config| {
        config.limits.challenge_ttl = Duration::from_millis(200);
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let client = connect(&server).await;
    let challenge = client.challenge().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signature = sign(&alice.identity, &server.addr.to_string(), "alice", &challenge.nonce);
    let error = client
        .call::<_, serde_json::Value>(
            "auth:login",
            &json!({ "userId": "alice", "signature": signature }),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("challenge_expired"));
}

#[tokio::test]
async fn a_registration_must_prove_the_identity_key() {
    let server = TestServer::start().await;
    let (identity, spk, _) = keys(0);
    let (other, _, _) = keys(0);
    let client = connect(&server).await;
    let challenge = client.challenge().await.unwrap();
    let signature = sign(&other, &server.addr.to_string(), "dave", &challenge.nonce);
    let answer = client
        .call::<_, serde_json::Value>(
            "user:register-key",
            &json!({
                "userId": "dave",
                "identity": PublicIdentityJson::from(identity.public()),
                "signedPrekey": SignedPrekeyJson::from(spk.public()),
                "signature": signature,
            }),
        )
        .await;
    assert_eq!(answer.unwrap_err().code(), Some("authentication_failed"));
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn keys_with_bad_signatures_or_points_are_refused_at_registration() {
    let server = TestServer::start().await;
    let (identity, spk, opks) = keys(2);
    let (other, other_spk, _) = keys(0);
    let good_identity = PublicIdentityJson::from(identity.public());
    let mut swapped_identity = good_identity.clone();
    swapped_identity.dh = PublicIdentityJson::from(other.public()).dh;
    let mut off_curve = OneTimePrekeyJson::from(&opks[0].public());
    let mut key = wire::from_b64("k", &off_curve.key).unwrap();
    key[64] ^= 1;
    off_curve.key = wire::b64(&key);
    let cases = [
        ("identity binding", swapped_identity, SignedPrekeyJson::from(spk.public()), vec![]),
        (
            "prekey by another identity",
            good_identity.clone(),
            SignedPrekeyJson::from(other_spk.public()),
            vec![],
        ),
        (
            "off-curve one-time prekey",
            good_identity.clone(),
            SignedPrekeyJson::from(spk.public()),
            vec![off_curve],
        ),
    ];
    for (name, identity_json, spk_json, opk_json) in cases {
        let client = connect(&server).await;
        let challenge = client.challenge().await.unwrap();
        let signature = sign(&identity, &server.addr.to_string(), "erin", &challenge.nonce);
        let error = client
            .call::<_, serde_json::Value>(
                "user:register-key",
                &json!({
                    "userId": "erin",
                    "identity": identity_json,
                    "signedPrekey": spk_json,
                    "oneTimePrekeys": opk_json,
                    "signature": signature,
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("invalid_keys"), "{name}");
    }
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn an_unauthenticated_socket_can_only_register_or_log_in() {
    let server = TestServer::start().await;
    TestUser::register(&server, "bob").await;
    let client = connect(&server).await;
    let requests = [
        ("user:request-key", json!({ "userId": "bob" })),
        (
            "message:send",
            json!({ "to": "bob", "id": client_id(), "envelope": serde_json::from_str::<serde_json::Value>(envelope(1).get()).unwrap() }),
        ),
        ("message:ack", json!({ "ids": [1] })),
        ("message:status", json!({ "ids": [1] })),
    ];
    for (event, request) in requests {
        let error = client.call::<_, serde_json::Value>(event, &request).await.unwrap_err();
        assert_eq!(error.code(), Some("unauthenticated"), "{event}");
    }
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
}

#[tokio::test]
async fn repeated_failures_close_the_connection_and_so_does_staying_anonymous() {
    let server = TestServer::start_with(|config| {
        config.limits.auth_timeout = Duration::from_millis(500);
    })
    .await;
    TestUser::register(&server, "alice").await;
    let client = connect(&server).await;
    for _ in 0..5 {
        client.challenge().await.unwrap();
        let bad = json!({ "userId": "alice", "signature": wire::b64(&[1u8; 64]) });
        let _ = client.call::<_, serde_json::Value>("auth:login", &bad).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!client.is_open(), "closed after too many failures");

    let idle = connect(&server).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!idle.is_open(), "closed after the login deadline");
}

/// The login deadline is a timer task per connection, as long as the deadline (a minute by
/// default); logging in cancels it, so logged-in connections do not hold one.
#[tokio::test]
async fn logging_in_cancels_the_login_deadline() {
    const USERS: usize = 10;
    let deadline = Duration::from_secs(4);
    let server = TestServer::start_with(|config| config.limits.auth_timeout = deadline).await;
    let started = tokio::time::Instant::now();
    let mut users = Vec::new();
    for n in 0..USERS {
        users.push(TestUser::register(&server, &format!("user{n}")).await);
    }
    // Let the handlers' own tasks finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    assert!(started.elapsed() < deadline, "registering took too long for this test to tell");
    tokio::time::sleep_until(started + deadline + Duration::from_millis(700)).await;
    let after = runtime.num_alive_tasks();
    // Uncancelled, the USERS timers would have ended at the deadline.
    assert!(
        before.abs_diff(after) < USERS / 2,
        "{before} tasks before the deadline, {after} after"
    );
    for user in &users {
        assert!(user.client.is_open(), "a logged-in connection stays open past the deadline");
    }
}

#[tokio::test]
async fn a_sender_field_cannot_be_smuggled_in() {
    let server = TestServer::start().await;
    let mallory = TestUser::register(&server, "mallory").await;
    let mut bob = TestUser::register(&server, "bob").await;
    TestUser::register(&server, "alice").await;
    let envelope_value: serde_json::Value = serde_json::from_str(envelope(1).get()).unwrap();
    let spoofed =
        json!({ "to": "bob", "from": "alice", "id": client_id(), "envelope": envelope_value });
    let error =
        mallory.client.call::<_, serde_json::Value>("message:send", &spoofed).await.unwrap_err();
    assert_eq!(error.code(), Some("bad_request"));
    // The sender is always the authenticated user.
    mallory.client.send_raw("bob", &client_id(), &envelope(2)).await.unwrap();
    assert_eq!(bob.messages(1).await[0].from, "mallory");
}

/// A relay in the middle passes on the real relay's challenge with its own name in `Host`: the
/// login is bound to the name the victim connected to, which the real relay does not answer to.
#[tokio::test]
async fn a_login_relayed_under_a_forged_host_header_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let forged = "evil.example:3000";
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("host", forged.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The next packet starting with `prefix`, skipping heartbeats.
    macro_rules! expect {
        ($prefix:expr) => {
            loop {
                if let Some(Ok(Message::Text(text))) = socket.next().await
                    && let Some(rest) = text.as_str().strip_prefix($prefix)
                {
                    break rest.to_owned();
                }
            }
        };
    }
    expect!("0");
    socket.send(Message::text("40")).await.unwrap();
    expect!("40");
    socket.send(Message::text(r#"420["auth:challenge"]"#)).await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&expect!("430")).unwrap();
    let nonce = answer[0]["nonce"].as_str().unwrap().to_owned();
    let signature = sign(&alice.identity, forged, "alice", &nonce);
    let login = json!(["auth:login", { "userId": "alice", "signature": signature }]);
    socket.send(Message::text(format!("421{login}"))).await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&expect!("431")).unwrap();
    assert_eq!(answer[0]["ok"], false, "{answer}");
    assert_eq!(answer[0]["error"], "authentication_failed", "{answer}");
}

/// One address may claim only so many ids: after the burst, a registration (well formed and
/// signed) is refused with `rate_limited` and a wait, nothing is stored, and logging in to the
/// ids already claimed is unaffected.
#[tokio::test]
async fn registrations_from_one_address_are_limited() {
    let server = TestServer::start_with(|config| {
        config.limits.registrations_per_hour = 6;
        config.limits.registrations_burst = 3;
    })
    .await;
    let mut first = TestUser::register(&server, "first").await;
    TestUser::register(&server, "second").await;
    TestUser::register(&server, "third").await;

    let (identity, spk, _) = keys(0);
    let client = connect(&server).await;
    let error = client
        .register(&UserId::parse("fourth").unwrap(), &identity, spk.public(), &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("rate_limited"), "{error:?}");
    let sotto_client::relay::RelayError::Refused(refusal) = &error else { panic!("{error:?}") };
    let wait = refusal.retry_after_ms.unwrap();
    assert!((590_000..=600_000).contains(&wait), "one registration per ten minutes: {wait} ms");
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM users WHERE user_id = 'fourth'").await, 0);

    // Another connection from the same address is the same address.
    let again = connect(&server).await;
    let error = again
        .register(&UserId::parse("fourth").unwrap(), &identity, spk.public(), &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("rate_limited"));
    first.reconnect(&server).await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_rejections_total{reason=\"rate_limited\"} 2"), "{metrics}");
}

/// An id the operator released (say, after its identity key was stolen) and someone registered
/// again belongs to its new holder alone: a connection still logged in under it from before is
/// closed at once, and the new holder's messages reach only the new holder.
#[tokio::test]
async fn registering_a_released_id_closes_the_earlier_holders_connections() {
    let server = TestServer::start().await;
    let carol = TestUser::register(&server, "carol").await;
    let mut earlier = TestUser::register(&server, "bob").await;

    // `sotto admin release-user bob`, beside the running relay.
    let storage = sotto_server::storage::open(&server.database_url).await.unwrap();
    assert!(storage.release_user("bob").await.unwrap());
    storage.close().await;
    assert!(earlier.client.is_open(), "releasing alone does not reach the relay's connections");
    // But that connection speaks for nobody: what it sends is refused (once the relay reads
    // the id again: at once here, within a minute for an id it looked up just before).
    let error = earlier.client.send_raw("carol", &client_id(), &envelope(2)).await.unwrap_err();
    assert_eq!(error.code(), Some("unknown_user"), "{error:?}");
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);

    let mut bob = TestUser::register(&server, "bob").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while earlier.client.is_open() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!earlier.client.is_open(), "the earlier holder's connection is closed");
    assert!(bob.client.is_open(), "the new holder's own connection stays");

    let to = UserId::parse("bob").unwrap();
    carol.client.send_raw(to.as_str(), &client_id(), &envelope(1)).await.unwrap();
    assert_eq!(bob.messages(1).await.len(), 1, "the new holder gets the message");
    earlier.no_messages(Duration::from_millis(300)).await;
}

/// What an id's earlier holder sent and is still queued when the id is released and
/// registered anew still reaches its recipients, but tells the new holder nothing: no receipt
/// when it is acknowledged (matched from the relay's memory of recent messages, or from the
/// database after a restart), and a status request answers as for a message never sent.
/// Otherwise the new holder would learn whom the earlier holder wrote to.
#[tokio::test]
async fn an_earlier_holders_queued_messages_tell_the_ids_new_holder_nothing() {
    let server = TestServer::start().await;
    let earlier = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    let mut sent = Vec::new();
    for n in 0..2 {
        sent.push(earlier.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap().id);
    }
    // `sotto admin release-user alice`, beside the running relay; then someone takes the id.
    let storage = sotto_server::storage::open(&server.database_url).await.unwrap();
    assert!(storage.release_user("alice").await.unwrap());
    storage.close().await;
    let mut alice = TestUser::register(&server, "alice").await;
    let statuses = alice.client.status(&sent).await.unwrap();
    assert!(statuses.iter().all(|(_, status)| status == "delivered"), "{statuses:?}");

    // Bob gets both, from "alice". The first is acknowledged now: the relay stored it moments
    // ago and matches it from memory.
    bob.reconnect(&server).await;
    let received = bob.messages(2).await;
    assert_eq!(received.iter().map(|m| m.id).collect::<Vec<_>>(), sent);
    assert!(received.iter().all(|m| m.from == "alice"));
    bob.client.ack(&sent[..1]).await.unwrap();
    assert_only_own_receipt(&mut alice, &mut bob).await;
    // The second after a restart, matched by the database.
    let server = server.restart().await;
    alice.reconnect(&server).await;
    bob.reconnect(&server).await;
    assert_eq!(bob.messages(1).await[0].id, sent[1]);
    bob.client.ack(&sent[1..]).await.unwrap();
    assert_only_own_receipt(&mut alice, &mut bob).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
}

/// Alice sends bob a message, which he acknowledges: the first receipt alice is told of is
/// its own (receipts go out in the order of the acknowledgements, so one for a message bob
/// acknowledged before would come first).
async fn assert_only_own_receipt(alice: &mut TestUser, bob: &mut TestUser) {
    let own = alice.client.send_raw("bob", &client_id(), &envelope(9)).await.unwrap().id;
    assert_eq!(bob.messages_acknowledged(1).await[0].id, own);
    let receipts = alice.receipts().await;
    let told: Vec<i64> = receipts.iter().map(|receipt| receipt.id).collect();
    assert_eq!(told, [own], "the new holder was told of the earlier holder's messages");
}

/// The terminal client saves its identity before registering it. When the relay's answer is
/// lost (here: the flag recording it is cleared, as if the process died before noting it),
/// `register` again finishes with the same keys instead of finding its own id taken; an id
/// someone else holds is refused and leaves the home free for another.
#[tokio::test]
async fn a_terminal_registration_whose_answer_was_lost_finishes_on_the_next_try() {
    use sotto_client::store::Store;
    use sotto_client::{Client, ClientError};
    let server = TestServer::start().await;
    let TerminalUser { home, id: dora, client, relay, .. } =
        TerminalUser::register(&server, "dora").await;
    let first = client.store().identity().await.unwrap().unwrap().keys;
    relay.close();
    client.close().await;

    let database = format!("sqlite:{}", home.path().join("sotto.db").display());
    let pool = sqlx::SqlitePool::connect(&database).await.unwrap();
    sqlx::query("UPDATE identity SET registered = 0").execute(&pool).await.unwrap();
    pool.close().await;
    let unfinished = Client::open(home.path()).await;
    assert!(matches!(unfinished, Err(ClientError::RegistrationUnfinished(_))), "{unfinished:?}");

    let (client, relay, _) = Client::register(home.path(), &server.url, &dora).await.unwrap();
    let again = client.store().identity().await.unwrap().unwrap().keys;
    assert!(again.public().same_keys(first.public()), "the same keys, registered before");
    relay.close();
    client.close().await;
    Client::open(home.path()).await.unwrap().close().await;

    let elsewhere = tempfile::tempdir().unwrap();
    let taken = Client::register(elsewhere.path(), &server.url, &dora).await;
    assert!(
        matches!(&taken, Err(ClientError::Relay(error)) if error.code() == Some("user_taken")),
        "{taken:?}"
    );
    let store = Store::open(elsewhere.path()).await.unwrap();
    assert!(store.identity().await.unwrap().is_none(), "nothing kept of a refused id");
    store.close().await;
    let edgar = UserId::parse("edgar").unwrap();
    let (client, relay, _) = Client::register(elsewhere.path(), &server.url, &edgar).await.unwrap();
    relay.close();
    client.close().await;
}

/// A user holds at most `max_connections_per_user` logged-in connections: one more login is
/// refused clearly (and binds nothing: the refused connection can log in once another closes),
/// while other users are unaffected.
#[tokio::test]
async fn logins_past_the_per_user_connection_limit_are_refused_until_one_closes() {
    let server = TestServer::start_with(|config| config.limits.max_connections_per_user = 3).await;
    let alice = TestUser::register(&server, "alice").await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let client = connect(&server).await;
        client.login(&alice.id, &alice.identity).await.unwrap();
        others.push(client);
    }
    let refused = connect(&server).await;
    let error = refused.login(&alice.id, &alice.identity).await.unwrap_err();
    assert_eq!(error.code(), Some("too_many_connections"), "{error}");
    // Refused, the connection is still anonymous: it may not send.
    let send = refused.send_raw("alice", &client_id(), &envelope(1)).await.unwrap_err();
    assert_eq!(send.code(), Some("unauthenticated"));
    // Another user is not limited by alice's connections.
    TestUser::register(&server, "bob").await;

    others.pop().unwrap().close();
    let mut login = None;
    for _ in 0..100 {
        match refused.login(&alice.id, &alice.identity).await {
            Ok(answer) => {
                login = Some(answer);
                break;
            }
            // The relay may not have seen the close yet.
            Err(error) if error.code() == Some("too_many_connections") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(login.expect("a login once a connection closed").user_id, "alice");
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains(r#"sotto_rejections_total{reason="too_many_connections"} 1"#),
        "refusals are counted: {metrics}"
    );
}
