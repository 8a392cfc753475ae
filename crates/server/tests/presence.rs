//! Presence goes only to users who have exchanged messages, never to everyone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use sotto_client::relay::Incoming;
use support::{TestServer, TestUser, WAIT, client_id, envelope};

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

#[tokio::test]
async fn presence_reaches_contacts_only() {
    let server = TestServer::start().await;
    let mut alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let mut stranger = TestUser::register(&server, "stranger").await;
    // Alice writes to Bob: they become contacts, and each learns the other is online.
    let sent = alice.client.send_raw("bob", &client_id(), &envelope(1)).await.unwrap();
    bob.messages(1).await;
    bob.client.ack(&[sent.id]).await.unwrap();
    let events = drain(&mut bob, Duration::from_millis(300)).await;
    assert_eq!(presence(&events), ["+alice"]);
    let events = drain(&mut alice, Duration::from_millis(300)).await;
    assert_eq!(presence(&events), ["+bob"]);

    // Alice leaves and comes back: Bob hears both; the stranger hears nothing.
    alice.client.close();
    let events = drain(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(presence(&events), ["-alice"]);
    alice.reconnect(&server).await;
    let events = drain(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(presence(&events), ["+alice"]);
    // On login, Alice is told which contacts are online.
    let events = drain(&mut alice, Duration::from_millis(300)).await;
    assert_eq!(presence(&events), ["+bob"]);
    let events = drain(&mut stranger, Duration::from_millis(300)).await;
    assert!(presence(&events).is_empty(), "{:?}", presence(&events));
    let _ = WAIT;
}
