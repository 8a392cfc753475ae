//! The key directory: each one-time prekey handed out exactly once, even under concurrent
//! claims; the signed prekey when none are left; the owner told when few remain; uploads capped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sotto_client::relay::{Incoming, RelayClient};
use sotto_protocol::UserId;
use sotto_protocol::prekeys::OneTimePrekey;
use support::{TestServer, TestUser, WAIT, keys};

#[tokio::test]
async fn concurrent_claims_get_each_one_time_prekey_once_then_the_signed_prekey() {
    // Thirty requesters register from this one address: the registration limit is not under test.
    let server = TestServer::start_with(|config| {
        config.limits.prekey_fetches_per_minute = 0;
        config.limits.registrations_per_hour = 0;
    })
    .await;
    let bob = TestUser::register_with(&server, "bob", 20).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let requester = TestUserLite::register(&url, &format!("requester{i}")).await;
            requester.request_bundle(&UserId::parse("bob").unwrap()).await.unwrap()
        }));
    }
    let mut handed_out = Vec::new();
    let mut without = 0;
    for task in tasks {
        let bundle = task.await.unwrap();
        assert_eq!(bundle.signed_prekey().id, bob.signed_prekey.id());
        assert!(bundle.identity().same_keys(bob.identity.public()));
        match bundle.one_time_prekey() {
            Some(opk) => handed_out.push(opk.id),
            None => without += 1,
        }
    }
    let distinct: HashSet<u32> = handed_out.iter().copied().collect();
    assert_eq!(handed_out.len(), 20, "all 20 handed out");
    assert_eq!(distinct.len(), 20, "none twice");
    assert_eq!(without, 10, "then the signed prekey alone");
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM one_time_prekeys").await, 0);
}

/// A registered connection without the test-user bookkeeping.
struct TestUserLite;

impl TestUserLite {
    async fn register(url: &str, name: &str) -> RelayClient {
        let (identity, spk, _) = keys(0);
        let (client, _) = RelayClient::connect(url, WAIT).await.unwrap();
        client.register(&UserId::parse(name).unwrap(), &identity, spk.public(), &[]).await.unwrap();
        client
    }
}

#[tokio::test]
async fn the_owner_hears_when_prekeys_run_low_and_can_top_up() {
    let server = TestServer::start().await;
    let mut bob = TestUser::register_with(&server, "bob", 21).await;
    let alice = TestUser::register(&server, "alice").await;
    alice.client.request_bundle(&bob.id).await.unwrap();
    // 20 left: not below the watermark yet.
    assert!(matches!(bob.next(Duration::from_millis(300)).await, None | Some(Incoming::Joined(_))));
    alice.client.request_bundle(&bob.id).await.unwrap();
    let remaining = loop {
        match bob.next(WAIT).await.expect("prekeys:low") {
            Incoming::PrekeysLow(remaining) => break remaining,
            _ => continue,
        }
    };
    assert_eq!(remaining, 19);
    let mut rng = rand::rng();
    let more: Vec<_> =
        (100..150).map(|id| OneTimePrekey::generate(id, &mut rng).public()).collect();
    assert_eq!(bob.client.upload_prekeys(None, &more).await.unwrap(), 69);
    // A new signed prekey replaces the old one.
    let rotated = sotto_protocol::SignedPrekey::generate(&bob.identity, 2, 1_767_300_000, &mut rng);
    bob.client.upload_prekeys(Some(rotated.public()), &[]).await.unwrap();
    let bundle = alice.client.request_bundle(&bob.id).await.unwrap();
    assert_eq!(bundle.signed_prekey().id, 2);
}

#[tokio::test]
async fn uploads_are_capped_and_checked() {
    let server = TestServer::start().await;
    let bob = TestUser::register_with(&server, "bob", 0).await;
    let mut rng = rand::rng();
    let too_many: Vec<_> =
        (0..101).map(|id| OneTimePrekey::generate(id, &mut rng).public()).collect();
    let error = bob.client.upload_prekeys(None, &too_many).await.unwrap_err();
    assert_eq!(error.code(), Some("too_many_prekeys"));
    // Stored keys are capped too.
    let mut total = 0;
    for batch in 0..6u32 {
        let keys: Vec<_> =
            (0..100).map(|i| OneTimePrekey::generate(batch * 100 + i, &mut rng).public()).collect();
        total = bob.client.upload_prekeys(None, &keys).await.unwrap();
    }
    assert_eq!(total, 500);
    // A signed prekey signed by someone else is refused.
    let (mallory, _, _) = keys(0);
    let forged = sotto_protocol::SignedPrekey::generate(&mallory, 9, 0, &mut rng);
    let error = bob.client.upload_prekeys(Some(forged.public()), &[]).await.unwrap_err();
    assert_eq!(error.code(), Some("invalid_keys"));
}

#[tokio::test]
async fn bundle_fetches_are_rate_limited_per_target() {
    let server = TestServer::start().await;
    let bob = TestUser::register(&server, "bob").await;
    let carol = TestUser::register(&server, "carol").await;
    let alice = TestUser::register(&server, "alice").await;
    for _ in 0..10 {
        alice.client.request_bundle(&bob.id).await.unwrap();
    }
    let error = alice.client.request_bundle(&bob.id).await.unwrap_err();
    assert_eq!(error.code(), Some("rate_limited"));
    // Another target is unaffected.
    alice.client.request_bundle(&carol.id).await.unwrap();
    let error = alice.client.request_bundle(&UserId::parse("nobody").unwrap()).await.unwrap_err();
    assert_eq!(error.code(), Some("unknown_user"));
    let error = alice.client.request_bundle(&alice.id).await.unwrap_err();
    assert_eq!(error.code(), Some("bad_request"));
}

/// The relay warns on every bundle fetch below its mark, so a client that was busy finds
/// several `prekeys:low` waiting. It tops up once: the warnings that arrived before its upload
/// was answered count keys it has since replenished (each used to upload another batch, kept
/// in the client's store for ever and, past the relay's cap, dropped there).
#[tokio::test]
async fn queued_low_prekey_warnings_top_up_once() {
    use sotto_client::Client;
    let server = TestServer::start_with(|config| config.limits.prekey_fetches_per_minute = 0).await;
    let home = tempfile::tempdir().unwrap();
    let dora = UserId::parse("dora").unwrap();
    let (client, relay, mut pushes) =
        Client::register(home.path(), &server.url, &dora).await.unwrap();
    let fetcher = TestUser::register(&server, "fetcher").await;
    // 85 of dora's 100 keys handed out: five warnings (19, 18, 17, 16, 15 left) wait for her.
    for _ in 0..85 {
        fetcher.client.request_bundle(&dora).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut warnings = 0;
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_millis(300), pushes.recv()).await
    {
        warnings += usize::from(push.event == "prekeys:low");
        client.handle(&relay, push).await.unwrap();
    }
    assert_eq!(warnings, 5);
    let at_relay =
        server.query_i64("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = 'dora'").await;
    // The first warning said 19 were left, so 81 were added to the 15 really left, once.
    assert_eq!(at_relay, 96, "topped up once, not once per warning");
    let kept = client.store().one_time_prekey_count().await.unwrap();
    assert_eq!(kept, 181, "the 100 first keys (85 handed out, kept until used) and 81 new");
    relay.close();
    client.close().await;
}

/// Two processes on one terminal store (`sotto chat` beside a `sotto recv`) topping up at the
/// same moment take different key ids: both uploads go through, and every key is kept.
#[tokio::test]
async fn two_clients_on_one_store_top_up_at_once() {
    use sotto_client::Client;
    let server = TestServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let dora = UserId::parse("dora").unwrap();
    let (first, relay, _) = Client::register(home.path(), &server.url, &dora).await.unwrap();
    relay.close();
    let second = Client::open(home.path()).await.unwrap();
    let (first_relay, _, _) = first.connect(&server.url).await.unwrap();
    let (second_relay, _, _) = second.connect(&server.url).await.unwrap();
    let (a, b) = tokio::join!(
        first.maintain_prekeys(&first_relay, 0),
        second.maintain_prekeys(&second_relay, 0)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(first.store().one_time_prekey_count().await.unwrap(), 300, "100 + 2 × 100");
    let at_relay =
        server.query_i64("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = 'dora'").await;
    assert_eq!(at_relay, 300);
    for client in [first, second] {
        client.close().await;
    }
}
