//! Presence is shared one way: a user's comings and goings reach only the users they have
//! written to. Writing to someone shares nothing about them, so a stranger cannot watch a user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use sotto_client::relay::Incoming;
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
