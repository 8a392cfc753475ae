//! Presence is shared one way: a user's comings and goings reach only the users they have
//! written to. Writing to someone shares nothing about them, so a stranger cannot watch a user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use sotto_client::relay::{Incoming, RelayClient};
use support::{TestServer, TestUser, client_id, envelope};

fn presence(events: &[Incoming]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Incoming::Joined(user) => Some(format!("+{user}")),
            Incoming::Left(user) => Some(format!("-{user}")),
            _ => None,
        })
        .collect()
}

async fn drain(user: &mut TestUser, wait: Duration) -> Vec<Incoming> {
    let mut out = std::mem::take(&mut user.seen);
    while let Some(event) = user.next(wait).await {
        out.push(event);
    }
    out
}

const QUIET: Duration = Duration::from_millis(400);

/// Sends one message and has the recipient take and acknowledge it.
async fn write(from: &TestUser, to: &mut TestUser, n: u32) {
    let sent = from.client.send_raw(to.id.as_str(), &client_id(), &envelope(n)).await.unwrap();
    to.messages(1).await;
    to.client.ack(&[sent.id]).await.unwrap();
}

#[tokio::test]
async fn presence_reaches_only_those_a_user_has_written_to() {
    let server = TestServer::start().await;
    let mut alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let mut stranger = TestUser::register(&server, "stranger").await;

    // Alice writes to Bob: from now on Bob sees when Alice is online. Alice learns nothing of
    // Bob, who has not written to her.
    write(&alice, &mut bob, 1).await;
    assert_eq!(presence(&drain(&mut bob, QUIET).await), ["+alice"]);
    assert!(presence(&drain(&mut alice, QUIET).await).is_empty());

    // A stranger writes to Alice: Alice sees the stranger; the stranger sees nothing of Alice.
    write(&stranger, &mut alice, 2).await;
    assert_eq!(presence(&drain(&mut alice, QUIET).await), ["+stranger"]);

    // Alice leaves and comes back: Bob hears both; the stranger hears neither. On login Alice is
    // told who of those who wrote to her is online: the stranger, not Bob.
    alice.client.close();
    assert_eq!(presence(&drain(&mut bob, QUIET).await), ["-alice"]);
    alice.reconnect(&server).await;
    assert_eq!(presence(&drain(&mut bob, QUIET).await), ["+alice"]);
    assert_eq!(presence(&drain(&mut alice, QUIET).await), ["+stranger"]);
    assert!(presence(&drain(&mut stranger, QUIET).await).is_empty(), "the stranger watched Alice");

    // Bob leaving tells Alice nothing until Bob writes to her; then she sees him come and go.
    bob.client.close();
    assert!(presence(&drain(&mut alice, QUIET).await).is_empty());
    bob.reconnect(&server).await;
    write(&bob, &mut alice, 3).await;
    assert_eq!(presence(&drain(&mut alice, QUIET).await), ["+bob"]);
    bob.client.close();
    assert_eq!(presence(&drain(&mut alice, QUIET).await), ["-bob"]);
}

/// The metric line `name value`, as a number.
async fn gauge(server: &TestServer, name: &str) -> Option<i64> {
    let (_, metrics) = server.get("/metrics").await;
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits up to two seconds for the gauge to read `expected`; returns what it read last.
async fn settled_gauge(server: &TestServer, name: &str, expected: i64) -> Option<i64> {
    let mut value = None;
    for _ in 0..40 {
        value = gauge(server, name).await;
        if value == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

/// A connection that goes while its login or registration is still being checked has its
/// disconnect handled before the user is bound to it: the user must not stay online, counted
/// or in the relay's rooms after that.
#[tokio::test]
async fn a_connection_closed_while_logging_in_leaves_its_user_offline() {
    let server = TestServer::start().await;
    let mut alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    write(&alice, &mut bob, 1).await;
    alice.client.close();
    drain(&mut bob, QUIET).await;

    for round in 0..20 {
        // Logging in as Alice, and registering someone new, each closed right after the request
        // (the close is read in the same burst, while the request waits for the database).
        let (client, _pushes) = RelayClient::connect(&server.url, support::WAIT).await.unwrap();
        let signature = client.signed_challenge(&alice.id, &alice.identity).await.unwrap();
        let login = serde_json::json!({ "userId": alice.id.as_str(), "signature": signature });
        client.socket().emit("auth:login", &login).unwrap();
        client.close();

        let (identity, signed_prekey, _) = support::keys(0);
        let name = sotto_protocol::UserId::parse(&format!("late{round}")).unwrap();
        let (client, _pushes) = RelayClient::connect(&server.url, support::WAIT).await.unwrap();
        let signature = client.signed_challenge(&name, &identity).await.unwrap();
        let register = serde_json::json!({
            "userId": name.as_str(),
            "identity": sotto_protocol::wire::PublicIdentityJson::from(identity.public()),
            "signedPrekey": sotto_protocol::wire::SignedPrekeyJson::from(signed_prekey.public()),
            "oneTimePrekeys": [],
            "signature": signature,
        });
        client.socket().emit("user:register-key", &register).unwrap();
        client.close();
    }

    // Only Bob is left, and to Bob, Alice is gone.
    assert_eq!(settled_gauge(&server, "sotto_authenticated_connections", 1).await, Some(1));
    assert_eq!(settled_gauge(&server, "sotto_connections", 1).await, Some(1));
    let seen = presence(&drain(&mut bob, QUIET).await);
    assert_ne!(seen.last().map(String::as_str), Some("+alice"), "Alice looks online: {seen:?}");

    // And the relay agrees: a message to Alice is stored, not pushed to a dead connection, and
    // reaches her when she really comes back.
    let sent = bob.client.send_raw(alice.id.as_str(), &client_id(), &envelope(2)).await.unwrap();
    alice.reconnect(&server).await;
    let received = alice.messages(1).await;
    assert_eq!(received[0].id, sent.id);
}

/// A pair already recorded is not announced again when a relay forgets which pairs it knows
/// (every registration clears that cache, and so does every housekeeping round).
#[tokio::test]
async fn writing_again_after_the_relay_forgot_its_cache_announces_nothing() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    write(&alice, &mut bob, 1).await;
    assert_eq!(presence(&drain(&mut bob, QUIET).await), ["+alice"]);

    TestUser::register(&server, "carol").await;
    write(&alice, &mut bob, 2).await;
    assert!(presence(&drain(&mut bob, QUIET).await).is_empty(), "Alice announced twice");
}
