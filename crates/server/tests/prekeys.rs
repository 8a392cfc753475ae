//! The key directory: each one-time prekey handed out exactly once, even under concurrent
//! claims; the signed prekey when none are left; the owner told when few remain; uploads capped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sotto_client::relay::{Incoming, RelayClient};
use sotto_protocol::UserId;
use sotto_protocol::prekeys::OneTimePrekey;
use support::{TerminalUser, TestServer, TestUser, WAIT, keys};

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
    let answer = bob.client.upload_prekeys(None, &more).await.unwrap();
    assert_eq!(answer.one_time_prekeys, 69);
    assert_eq!(answer.one_time_prekeys_kept, Some(50));
    // Ids 1 and 2 were handed out: the lowest the relay holds says so.
    assert_eq!(answer.one_time_prekeys_from, Some(3));
    assert_eq!(bob.reconnect(&server).await.one_time_prekeys_from, Some(3), "told at login too");
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
    let mut answers = Vec::new();
    for batch in 0..6u32 {
        let keys: Vec<_> =
            (0..100).map(|i| OneTimePrekey::generate(batch * 100 + i, &mut rng).public()).collect();
        answers.push(bob.client.upload_prekeys(None, &keys).await.unwrap());
    }
    let last = answers.last().unwrap();
    assert_eq!(last.one_time_prekeys, 500);
    assert_eq!(answers[4].one_time_prekeys_kept, Some(100));
    assert_eq!(last.one_time_prekeys_kept, Some(0), "the uploader is told none of these was kept");
    assert_eq!(last.one_time_prekeys_from, Some(0));
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
    let server = TestServer::start_with(|config| config.limits.prekey_fetches_per_minute = 0).await;
    let TerminalUser { id: dora, client, relay, mut pushes, .. } =
        TerminalUser::register(&server, "dora").await;
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

/// However often a relay asks for more one-time prekeys (here: a relay that keeps every
/// upload, asked to top up from nothing 25 times), the client keeps at most
/// `LOCAL_PREKEY_CAP` of them: past it, no more are made or uploaded.
#[tokio::test]
async fn a_client_keeps_a_bounded_number_of_one_time_prekeys() {
    let server = TestServer::start_with(|config| config.limits.max_prekeys_stored = 100_000).await;
    let TerminalUser { client, relay, .. } = TerminalUser::register(&server, "dora").await;
    for _ in 0..25 {
        client.maintain_prekeys(&relay, 0).await.unwrap();
    }
    let kept = client.store().one_time_prekey_count().await.unwrap();
    assert_eq!(kept, sotto_client::client::LOCAL_PREKEY_CAP);
    let at_relay =
        server.query_i64("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = 'dora'").await;
    assert_eq!(at_relay, 2_000, "what was made was uploaded, and nothing more");
    relay.close();
    client.close().await;
}

/// One-time prekeys the relay handed out but nobody used are not kept for ever: the client
/// marks them when the relay's lowest id passes them, and forgets them 30 days later. Keys
/// the relay dropped over its cap are forgotten at once.
#[tokio::test]
async fn handed_out_one_time_prekeys_are_forgotten_after_a_while() {
    let server = TestServer::start_with(|config| {
        config.limits.prekey_fetches_per_minute = 0;
        config.limits.max_prekeys_stored = 150;
    })
    .await;
    let TerminalUser { home, id: dora, client, relay, .. } =
        TerminalUser::register(&server, "dora").await;
    relay.close();
    let fetcher = TestUser::register(&server, "fetcher").await;
    // 30 of dora's 100 keys (ids 2 to 31) handed out; no prekey message ever comes.
    for _ in 0..30 {
        fetcher.client.request_bundle(&dora).await.unwrap();
    }
    let database = home.path().join("sotto.db");
    let store =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display())).await.unwrap();
    let handed_out = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM one_time_prekeys WHERE handed_out_at IS NOT NULL",
        )
        .fetch_one(&store)
        .await
        .unwrap()
    };
    assert_eq!(handed_out().await, 0);
    let (relay, _, answer) = client.connect(&server.url).await.unwrap();
    assert_eq!(answer.one_time_prekeys_from, Some(32));
    assert_eq!(handed_out().await, 30, "marked at login");
    assert_eq!(client.store().one_time_prekey_count().await.unwrap(), 100, "kept for now");
    relay.close();

    // A month later (the marks moved back): forgotten at the next login.
    sqlx::query("UPDATE one_time_prekeys SET handed_out_at = handed_out_at - 31 * 24 * 3600")
        .execute(&store)
        .await
        .unwrap();
    let (relay, _, _) = client.connect(&server.url).await.unwrap();
    assert_eq!(client.store().one_time_prekey_count().await.unwrap(), 70, "forgotten");
    assert_eq!(handed_out().await, 0);

    // Keys over the relay's cap (150 here) are forgotten as soon as the upload says so.
    client.maintain_prekeys(&relay, 0).await.unwrap();
    let at_relay =
        server.query_i64("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = 'dora'").await;
    assert_eq!(at_relay, 150);
    assert_eq!(client.store().one_time_prekey_count().await.unwrap(), 150, "80 of 100 kept");
    relay.close();
    store.close().await;
    client.close().await;
}

/// Two processes on one terminal store (`sotto chat` beside a `sotto recv`) topping up at the
/// same moment take different key ids: both uploads go through, and every key is kept.
#[tokio::test]
async fn two_clients_on_one_store_top_up_at_once() {
    let server = TestServer::start().await;
    let TerminalUser { home, client: first, relay, .. } =
        TerminalUser::register(&server, "dora").await;
    relay.close();
    let second = sotto_client::Client::open(home.path()).await.unwrap();
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
