//! Store-and-forward over real sockets: stored before the ack, pushed in order, deleted only on
//! the recipient's acknowledgement, resends stored once, the offline queue, restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use sotto_client::relay::Incoming;
use support::{TestServer, TestUser, client_id, envelope};

#[tokio::test]
async fn a_message_is_stored_pushed_and_deleted_on_ack() {
    let server = TestServer::start().await;
    let mut alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;

    let sent = alice.client.send_raw("bob", &client_id(), &envelope(0)).await.unwrap();
    assert!(!sent.duplicate);
    // Stored before the ack: the row is there now.
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);

    let got = bob.messages(1).await;
    assert_eq!(got[0].id, sent.id);
    assert_eq!(got[0].from, "alice");
    assert_eq!(got[0].envelope.get(), envelope_text(&got[0]));

    bob.client.ack(&[sent.id]).await.unwrap();
    // The sender hears that it was delivered.
    let receipt = alice.receipts().await;
    assert_eq!(receipt[0].id, sent.id);
    assert_eq!(receipt[0].to, "bob");
    // Acknowledged means deleted: nothing of the message stays.
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    assert_eq!(alice.client.status(&[sent.id]).await.unwrap(), vec![(sent.id, "delivered".into())]);
}

fn envelope_text(message: &sotto_client::relay::ReceivedMessage) -> &str {
    message.envelope.get()
}

#[tokio::test]
async fn the_envelope_is_forwarded_byte_for_byte() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let original = envelope(7);
    alice.client.send_raw("bob", &client_id(), &original).await.unwrap();
    assert_eq!(bob.messages(1).await[0].envelope.get(), original.get());
}

#[tokio::test]
async fn unacknowledged_messages_come_again_on_reconnect_and_acknowledged_ones_do_not() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap().id);
    }
    let first = bob.messages(5).await;
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    // Bob saves and acknowledges only the first two, then loses his connection.
    bob.client.ack(&ids[..2]).await.unwrap();
    let answer = bob.reconnect(&server).await;
    assert_eq!(answer.queued, 3);
    let again = bob.messages(3).await;
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), ids[2..]);
    bob.no_messages(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_resend_with_the_same_client_id_is_stored_once() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let id = client_id();
    let first = alice.client.send_raw("bob", &id, &envelope(1)).await.unwrap();
    let again = alice.client.send_raw("bob", &id, &envelope(1)).await.unwrap();
    assert_eq!(first.id, again.id);
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(bob.messages(1).await.len(), 1);
    bob.no_messages(Duration::from_millis(300)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);
    // After delivery the relay keeps nothing: a late resend is stored anew, and the
    // recipient's ratchet recognises it as a duplicate (see the protocol tests).
    bob.client.ack(&[first.id]).await.unwrap();
}

#[tokio::test]
async fn offline_recipients_get_their_queue_on_login_in_order() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    let mut ids = Vec::new();
    // More than one page of the catch-up.
    for n in 0..150 {
        ids.push(alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap().id);
    }
    let answer = bob.reconnect(&server).await;
    assert_eq!(answer.queued, 150);
    let got = bob.messages_acknowledged(150).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
}

/// Envelope bytes a catch-up leaves unacknowledged at most (`catch_up::WINDOW_BYTES`).
const CATCH_UP_WINDOW: usize = 32 * 1024;

fn envelope_bytes(messages: &[sotto_client::relay::ReceivedMessage]) -> usize {
    messages.iter().map(|m| m.envelope.get().len()).sum()
}

/// Collects pushes until none comes for a while.
async fn until_quiet(user: &mut TestUser) -> Vec<sotto_client::relay::ReceivedMessage> {
    let mut got = Vec::new();
    while let Some(push) = user.next(Duration::from_millis(400)).await {
        if let Incoming::Messages(messages) = push {
            got.extend(messages);
        }
    }
    got
}

#[tokio::test]
async fn a_catch_up_waits_for_acknowledgements_to_push_more() {
    let server = TestServer::start_with(|config| config.limits.pair_messages_per_second = 0).await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push(alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap().id);
    }
    bob.reconnect(&server).await;
    // A window's worth, oldest first, then nothing until Bob acknowledges.
    let first = until_quiet(&mut bob).await;
    assert!(!first.is_empty() && first.len() < 300, "{} of 300 before any ack", first.len());
    assert!(envelope_bytes(&first) <= CATCH_UP_WINDOW, "{} bytes", envelope_bytes(&first));
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..first.len()]);
    // Acknowledging ids that were never pushed makes no room.
    bob.client.ack(&[1, 2, 3]).await.unwrap();
    bob.no_messages(Duration::from_millis(300)).await;
    // Each acknowledgement lets the next window through, until all have come, in order.
    let mut got = first;
    let mut windows = 1;
    let live = loop {
        let pushed: Vec<i64> = got.iter().map(|m| m.id).collect();
        bob.client.ack(&pushed).await.unwrap();
        if got.len() >= 300 {
            break got;
        }
        let next = until_quiet(&mut bob).await;
        assert!(!next.is_empty(), "an acknowledgement let more through");
        assert!(envelope_bytes(&next) <= CATCH_UP_WINDOW);
        windows += 1;
        if windows == 3 {
            // A live message waits behind the backlog.
            let id = alice.client.send_raw("bob", &client_id(), &envelope(300)).await.unwrap().id;
            ids.push(id);
        }
        got.extend(next);
    };
    assert!(windows >= 3, "300 messages took {windows} windows");
    assert_eq!(live.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..live.len()]);
    if live.len() < ids.len() {
        let last = bob.messages_acknowledged(1).await;
        assert_eq!(last[0].id, *ids.last().unwrap());
    }
    bob.no_messages(Duration::from_millis(300)).await;
}

/// `sotto_connections_catching_up` counts a logged-in connection from its login until its
/// backlog is pushed and live messages reach it, and stops counting one that closes midway.
#[tokio::test]
async fn a_connection_counts_as_catching_up_until_its_backlog_is_pushed_or_it_closes() {
    let server = TestServer::start_with(|config| config.limits.pair_messages_per_second = 0).await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    caught_up(&server).await;
    bob.client.close();
    for n in 0..300 {
        alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap();
    }

    // Logged in, sent a window, waiting for an acknowledgement: catching up.
    bob.reconnect(&server).await;
    let first = until_quiet(&mut bob).await;
    assert!(!first.is_empty() && first.len() < 300, "{} of 300 before any ack", first.len());
    assert_eq!(metric(&server, "sotto_connections_catching_up").await, 1);
    // Gone midway: no longer counted.
    bob.client.close();
    caught_up(&server).await;

    // Back: counted while it has windows to go (300 messages are more than one), and no
    // longer once it has acknowledged them all.
    bob.reconnect(&server).await;
    let mut got = 0;
    while got < 300 {
        let window = until_quiet(&mut bob).await;
        assert!(!window.is_empty(), "stalled at {got} of 300");
        if got == 0 {
            assert_eq!(metric(&server, "sotto_connections_catching_up").await, 1);
        }
        got += window.len();
        bob.client.ack(&window.iter().map(|m| m.id).collect::<Vec<_>>()).await.unwrap();
    }
    caught_up(&server).await;
    let live = alice.client.send_raw("bob", &client_id(), &envelope(300)).await.unwrap().id;
    assert_eq!(bob.messages_acknowledged(1).await[0].id, live);
}

#[tokio::test]
async fn a_catch_up_pushes_a_message_larger_than_its_window_alone() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    // The largest ciphertext (a 32 KiB bucket and the tag): envelopes of about 43.9 KB, each
    // more than the window, so one at a time.
    let mut ids = Vec::new();
    for n in 0..3 {
        let large = support::envelope_of_size(n, 32 * 1024 + 16);
        ids.push(alice.client.send_raw("bob", &client_id(), &large).await.unwrap().id);
    }
    bob.reconnect(&server).await;
    for (n, id) in ids.iter().enumerate() {
        let got = until_quiet(&mut bob).await;
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![*id], "message {n}");
        bob.client.ack(&[*id]).await.unwrap();
    }
    bob.no_messages(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn per_sender_order_holds_while_messages_stream_during_login() {
    let server = TestServer::start_with(|config| {
        config.limits.events_per_second = 0;
        config.limits.pair_messages_per_second = 0;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let carol = TestUser::register(&server, "carol").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    // Two senders stream without waiting for acks while Bob logs in.
    let stream = |user: TestUser, count: u32| {
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..count {
                let client = user.client.clone();
                pending.push(tokio::spawn(async move {
                    client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap().id
                }));
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut ids = Vec::new();
            for task in pending {
                ids.push(task.await.unwrap());
            }
            (user, ids)
        })
    };
    let a = stream(alice, 300);
    let c = stream(carol, 300);
    tokio::time::sleep(Duration::from_millis(20)).await;
    bob.reconnect(&server).await;
    let (_alice, alice_ids) = a.await.unwrap();
    let (_carol, carol_ids) = c.await.unwrap();
    let got = bob.messages_acknowledged(600).await;
    for (sender, mut expected) in [("alice", alice_ids), ("carol", carol_ids)] {
        let order: Vec<i64> = got.iter().filter(|m| m.from == sender).map(|m| m.id).collect();
        expected.sort_unstable();
        assert_eq!(order, expected, "{sender}'s messages in order, each once");
    }
}

#[tokio::test]
async fn the_queue_survives_a_restart() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    let sent = alice.client.send_raw("bob", &client_id(), &envelope(3)).await.unwrap();
    let server = server.restart().await;
    let answer = bob.reconnect(&server).await;
    assert_eq!(answer.queued, 1);
    assert_eq!(bob.messages(1).await[0].id, sent.id);
}

#[tokio::test]
async fn every_socket_of_the_recipient_gets_the_push() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let (second, mut second_pushes) =
        sotto_client::relay::RelayClient::connect(&server.url, support::WAIT).await.unwrap();
    second.login(&bob.id, &bob.identity).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = alice.client.send_raw("bob", &client_id(), &envelope(1)).await.unwrap();
    assert_eq!(bob.messages(1).await[0].id, sent.id);
    let on_second = loop {
        let push =
            tokio::time::timeout(support::WAIT, second_pushes.recv()).await.unwrap().unwrap();
        if let Incoming::Messages(messages) = Incoming::from_push(push) {
            break messages;
        }
    };
    assert_eq!(on_second[0].id, sent.id);
}

#[tokio::test]
async fn unknown_recipients_are_refused() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let error = alice.client.send_raw("nobody", &client_id(), &envelope(1)).await.unwrap_err();
    assert_eq!(error.code(), Some("unknown_user"));
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let sent = alice.client.send_raw("bob", &client_id(), &envelope(1)).await.unwrap();
    bob.messages(1).await;
    bob.client.ack(&[sent.id]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "sotto_connections 2",
        "sotto_authenticated_connections 2",
        "sotto_messages_stored_total 1",
        "sotto_messages_delivered_total 1",
        "sotto_messages_acknowledged_total 1",
        "sotto_queue_depth 0",
        "sotto_logins_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
}

/// The web client's files are revalidated on every use against a tag of their content, so a
/// browser runs a new client as soon as the relay is upgraded; an unchanged file is a 304.
/// (Needs the built client in `web/dist`, as `scripts/test` builds it before these tests.)
#[tokio::test]
async fn the_web_client_is_revalidated_against_its_content_tag() {
    let server = TestServer::start().await;
    let get = async |path: &str, if_none_match: Option<&str>| {
        let condition: Vec<(&str, &str)> =
            if_none_match.map(|tag| ("If-None-Match", tag)).into_iter().collect();
        support::http_get_raw(server.addr, path, &condition).await
    };
    let header = |response: &str, name: &str| {
        let (head, _) = response.split_once("\r\n\r\n").unwrap();
        head.lines()
            .find_map(|line| line.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|(_, value)| value.to_owned())
    };
    for path in ["/", "/app.js"] {
        let first = get(path, None).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{path}: {first:.200}");
        assert_eq!(header(&first, "cache-control").as_deref(), Some("no-cache"), "{path}");
        let tag = header(&first, "etag").expect("an entity tag");
        assert_eq!(tag.len(), 34, "{path}: {tag}");
        let again = get(path, Some(&tag)).await;
        assert!(again.starts_with("HTTP/1.1 304"), "{path}: {again:.200}");
        assert!(again.ends_with("\r\n\r\n"), "{path}: a 304 has no body");
        let other = get(path, Some("\"0123\"")).await;
        assert!(other.starts_with("HTTP/1.1 200"), "{path}: another version gets the file");
    }
}

/// A message that waits too long for the storage writer (here: a commit held up by a lock
/// someone else holds on the database) is refused with the retryable `busy`, not stored late;
/// the one being committed is stored, and a resend of a refused one is stored once the writer
/// has caught up.
#[tokio::test]
async fn messages_that_wait_too_long_for_the_writer_are_refused_as_busy() {
    let server = TestServer::start_with(|config| {
        config.limits.max_send_backlog = Duration::from_millis(100);
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;

    // Another process holds SQLite's write lock: the writer's next commit waits for it.
    let other = rusqlite::Connection::open(&server.db_path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let send = |id: String, n: u32| {
        let client = alice.client.clone();
        tokio::spawn(async move { client.send_raw("bob", &id, &envelope(n)).await })
    };
    let first = send(client_id(), 1);
    // The writer takes the first message and waits in its commit; the next two wait for it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let late_ids = [client_id(), client_id()];
    let late: Vec<_> = late_ids.iter().zip(2..).map(|(id, n)| send(id.clone(), n)).collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    other.execute_batch("ROLLBACK").unwrap();

    let stored = first.await.unwrap().expect("the message in the commit is stored");
    for task in late {
        let error = task.await.unwrap().expect_err("a message that waited too long is refused");
        assert_eq!(error.code(), Some("busy"));
        assert!(error.retryable());
    }
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(bob.messages(1).await[0].id, stored.id);
    bob.no_messages(Duration::from_millis(300)).await;

    // The sender keeps a refused message and sends it again: now it is stored, once.
    let resent = alice.client.send_raw("bob", &late_ids[0], &envelope(2)).await.unwrap();
    assert!(!resent.duplicate);
    assert_eq!(bob.messages(1).await[0].id, resent.id);
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 2);
}

/// Acknowledgements sent just before the connection closes (read in the same burst as the
/// close) still delete: the connection keeps its user for the requests it already read. (A
/// login right after may still be sent the message while the acknowledgement is in flight;
/// clients drop a repeated id.)
#[tokio::test]
async fn acknowledgements_sent_right_before_closing_still_count() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    for round in 0..10 {
        let sent =
            alice.client.send_raw(bob.id.as_str(), &client_id(), &envelope(round)).await.unwrap();
        while !bob.messages(1).await.iter().any(|m| m.id == sent.id) {}
        bob.client.socket().emit("message:ack", &serde_json::json!({ "ids": [sent.id] })).unwrap();
        bob.client.close();
        bob.reconnect(&server).await;
    }
    let mut left = -1;
    for _ in 0..40 {
        left = server.query_i64("SELECT COUNT(*) FROM messages").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "acknowledged messages are still queued");
}

/// After a burst the relay gives memory back once it has gone quiet (`memory.rs`: the queue's
/// page cache and the allocator's free pages), once, and delivery goes on as before.
#[tokio::test]
async fn the_relay_gives_memory_back_once_quiet_after_a_burst() {
    let server = TestServer::start_with(|config| {
        config.limits.events_per_second = 0;
        config.limits.pair_messages_per_second = 0;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    // The burst: 600 messages stored and acknowledged, over a thousand events.
    for n in 0..600 {
        alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap();
    }
    bob.messages_acknowledged(600).await;
    let released = |metrics: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("sotto_memory_releases_total "))
            .map(|count| count.parse::<u64>().unwrap())
    };
    // Quiet from here: the release comes within two checks of five seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = server.get("/metrics").await;
        match released(&metrics) {
            Some(0) => assert!(tokio::time::Instant::now() < deadline, "no release after 20 s"),
            Some(1) => break,
            other => panic!("{other:?} releases after one burst"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let id = alice.client.send_raw("bob", &client_id(), &envelope(600)).await.unwrap().id;
    assert_eq!(bob.messages_acknowledged(1).await[0].id, id);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(released(&metrics), Some(1), "one message is no burst");
}

/// A recipient whose connection stops reading fills its outgoing buffer, and a push fails.
/// The relay then takes that connection out of delivery at once and closes it as soon as it
/// can, so no later message overtakes the one it missed: what arrived on that connection has
/// no gap, and after reconnecting the recipient gets the rest, in order.
#[tokio::test]
async fn a_connection_that_stops_reading_is_closed_without_a_gap_and_catches_up() {
    stop_reading_and_catch_up(None).await;
}

/// The same with the Redis adapter (the machine's Redis, channels under a prefix of this run's
/// own; the adapter keeps no keys): a clustered node pushes to its own sockets one by one too,
/// and ends the one that could not take a push. Before, its pushes went through the user's
/// room, whose error does not say which socket failed, and the socket stayed in delivery.
#[tokio::test]
async fn clustered_a_connection_that_stops_reading_is_closed_without_a_gap() {
    let redis =
        std::env::var("SOTTO_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    stop_reading_and_catch_up(Some(redis)).await;
}

async fn stop_reading_and_catch_up(redis_url: Option<String>) {
    let clustered = redis_url.is_some();
    const MESSAGES: u32 = 300;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_host = listener.local_addr().unwrap().to_string();
    let prefix = format!("sotto-test-{}", client_id());
    let server = TestServer::start_with(|config| {
        config.limits.max_outgoing_packets = 4;
        config.limits.pair_messages_per_second = 0;
        config.limits.events_per_second = 0;
        // Bob logs in through the proxy, so his login is signed for the proxy's address.
        config.public_hosts.push(proxy_host);
        config.redis_url = redis_url;
        config.redis_prefix = prefix;
    })
    .await;
    let (_alice, mut bob, proxy, sent) =
        support::alice_sends_while_bob_stops_reading(&server, listener, MESSAGES).await;
    proxy.resume();

    // Whatever reaches bob on this connection is the start of what alice sent, with no gap;
    // then the connection ends.
    let mut received = Vec::new();
    while let Some(push) = bob.next(support::WAIT).await {
        if let Incoming::Messages(messages) = push {
            received.extend(messages.iter().map(|m| m.id));
        }
    }
    assert!(!bob.client.is_open(), "the relay closed the connection it could not deliver to");
    assert!(received.len() < sent.len(), "the pause made pushes fail ({} arrived)", received.len());
    assert_eq!(received, sent[..received.len()], "no message overtook a missed one");

    // Reconnected, bob gets everything queued, in order.
    bob.reconnect(&server).await;
    let rest: Vec<i64> = bob.messages_acknowledged(sent.len()).await.iter().map(|m| m.id).collect();
    assert_eq!(rest, sent, "everything alice sent, in order, acknowledged or not before");
    if clustered {
        // Every push also went out through Redis: the relay never fell back to local only.
        let (_, metrics) = server.get("/metrics").await;
        assert!(metrics.contains("sotto_adapter_errors_total 0"), "{metrics}");
    }
}

/// A recipient whose client reads its pushes but stops acknowledging them (it no longer saves
/// them) is charged with what it was pushed: past its allowance the relay ends the connection,
/// so what it keeps for that connection stays bounded, and nothing is lost: on reconnecting the
/// recipient gets every unacknowledged message, in order. One that acknowledges is never ended,
/// however much it is sent.
#[tokio::test]
async fn a_connection_that_leaves_pushes_unacknowledged_is_ended_and_catches_up() {
    const ALLOWANCE: usize = 64 * 1024;
    let server = TestServer::start_with(|config| {
        config.limits.max_unacknowledged_push_bytes = ALLOWANCE;
        config.limits.pair_messages_per_second = 0;
        config.limits.events_per_second = 0;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let big = |n| support::envelope_of_size(n, 8 * 1024 + 16);

    // Acknowledging each push: 40 × 8 KiB, five times the allowance, and bob stays connected.
    for n in 0..40 {
        let id = alice.client.send_raw("bob", &client_id(), &big(n)).await.unwrap().id;
        assert_eq!(bob.messages_acknowledged(1).await[0].id, id);
    }
    assert!(bob.client.is_open());

    // Reading without acknowledging: the connection is ended once it holds more than 64 KiB.
    let mut sent = Vec::new();
    for n in 100..120 {
        sent.push(alice.client.send_raw("bob", &client_id(), &big(n)).await.unwrap().id);
    }
    let mut received = Vec::new();
    while let Some(push) = bob.next(Duration::from_secs(2)).await {
        if let Incoming::Messages(messages) = push {
            received.extend(messages.iter().map(|m| m.id));
        }
    }
    assert!(!bob.client.is_open(), "the relay ended the connection that kept everything");
    let pushed_bytes = received.len() * (8 * 1024);
    assert!(pushed_bytes <= ALLOWANCE, "{} messages pushed unacknowledged", received.len());
    assert!(received.len() < sent.len());
    assert_eq!(received, sent[..received.len()], "no gap in what arrived");
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_slow_connections_ended_total 1"), "{metrics}");

    // Reconnected, bob gets all of it, in order.
    bob.reconnect(&server).await;
    let rest: Vec<i64> = bob.messages_acknowledged(sent.len()).await.iter().map(|m| m.id).collect();
    assert_eq!(rest, sent);
}

/// An acknowledgement refused by the connection's event limit still tells the relay the client
/// has the messages: a client acknowledging faster than its limit is not ended as if it kept
/// them unread.
#[tokio::test]
async fn acknowledgements_over_the_event_limit_still_count_against_the_allowance() {
    const ALLOWANCE: usize = 64 * 1024;
    let server = TestServer::start_with(|config| {
        config.limits.max_unacknowledged_push_bytes = ALLOWANCE;
        config.limits.pair_messages_per_second = 0;
        config.limits.events_per_second = 1;
        config.limits.events_burst = 40;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    // Bob spends his burst, so his acknowledgements below are refused `rate_limited`.
    loop {
        if let Err(error) = bob.client.status(&[1]).await {
            assert_eq!(error.code(), Some("rate_limited"), "{error:?}");
            break;
        }
    }
    let mut acks_refused = 0;
    for n in 0..20 {
        let big = support::envelope_of_size(n, 8 * 1024 + 16);
        let id = alice.client.send_raw("bob", &client_id(), &big).await.unwrap().id;
        let pushed = bob.messages(1).await;
        assert_eq!(pushed[0].id, id);
        // One a second refills: the odd one may be taken.
        if let Err(error) = bob.client.ack(&[id]).await {
            assert_eq!(error.code(), Some("rate_limited"), "{error:?}");
            acks_refused += 1;
        }
    }
    assert!(acks_refused >= 15, "{acks_refused} of 20 refused");
    assert!(bob.client.is_open(), "20 × 8 KiB taken and acknowledged: not ended");
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_slow_connections_ended_total 0"), "{metrics}");
}

/// The write-behind's wait in the tests below: long enough that nothing they hold is written
/// on its own while they run.
const HOLD: Duration = Duration::from_secs(20);

/// A metric's value from `/metrics` (0 when absent; signed, so a gauge gone below zero shows).
async fn metric(server: &TestServer, name: &str) -> i64 {
    let (_, text) = server.get("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits until every connection that has logged in is caught up with its queue: only then do
/// live pushes reach it, and only messages for a recipient caught up here are pushed before
/// they are written. A connection counts as catching up from before its login is answered, so
/// once the gauge reads 0 after the logins, each of them is attached.
async fn caught_up(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while metric(server, "sotto_connections_catching_up").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "a login never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A relay holding messages for `HOLD` before writing them, with alice and bob registered and
/// bob caught up (so messages for him are pushed before they are written).
async fn holding_relay_with_alice_and_bob() -> (TestServer, TestUser, TestUser) {
    let server = TestServer::start_with(|config| config.write_behind = HOLD).await;
    let alice = TestUser::register(&server, "alice").await;
    let bob = TestUser::register(&server, "bob").await;
    caught_up(&server).await;
    (server, alice, bob)
}

/// Sends from a task, so a test can watch what happens while the sender waits for its answer.
fn send_in_background(
    user: &TestUser,
    to: &'static str,
    id: String,
    n: u32,
) -> tokio::task::JoinHandle<Result<sotto_client::relay::SendAnswer, sotto_client::relay::RelayError>>
{
    let client = user.client.clone();
    tokio::spawn(async move { client.send_raw(to, &id, &envelope(n)).await })
}

#[tokio::test]
async fn a_message_acknowledged_before_it_is_written_is_never_written() {
    let (server, mut alice, mut bob) = holding_relay_with_alice_and_bob().await;
    let send = send_in_background(&alice, "bob", client_id(), 1);
    let got = bob.messages(1).await;
    // Pushed first; not written, and the sender not answered, while it waits.
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!send.is_finished(), "answered before it was stored or acknowledged");

    bob.client.ack(&[got[0].id]).await.unwrap();
    let sent = send.await.unwrap().unwrap();
    assert_eq!((sent.id, sent.duplicate), (got[0].id, false));
    let receipt = alice.receipts().await;
    assert_eq!((receipt[0].id, receipt[0].to.as_str()), (sent.id, "bob"));
    assert_eq!(alice.client.status(&[sent.id]).await.unwrap(), vec![(sent.id, "delivered".into())]);
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 1);
    assert_eq!(metric(&server, "sotto_messages_stored_total").await, 0);
}

/// A message pushed and held unwritten is queued: the queue-depth gauge, counted afresh from
/// the database every round of housekeeping, counts it until it is acknowledged.
#[tokio::test]
async fn the_queue_depth_counts_messages_held_unwritten() {
    let server = TestServer::start_with(|config| {
        config.write_behind = HOLD;
        config.housekeeping_every = Duration::from_millis(50);
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    caught_up(&server).await;
    let send = send_in_background(&alice, "bob", client_id(), 1);
    let got = bob.messages(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0, "held, not written");
    assert_eq!(metric(&server, "sotto_queue_depth").await, 1);

    bob.client.ack(&[got[0].id]).await.unwrap();
    send.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&server, "sotto_queue_depth").await, 0);
}

#[tokio::test]
async fn a_pushed_message_not_acknowledged_in_time_is_stored_and_then_answered() {
    let server =
        TestServer::start_with(|config| config.write_behind = Duration::from_secs(1)).await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    caught_up(&server).await;
    let send = send_in_background(&alice, "bob", client_id(), 1);
    let got = bob.messages(1).await;
    // Held first: pushed, not written, not answered.
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    assert!(!send.is_finished());
    let sent = send.await.unwrap().unwrap();
    assert_eq!(sent.id, got[0].id);
    // "Stored" means on disk: the answer came once it was written.
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(server.query_i64("SELECT MIN(id) FROM messages").await, sent.id);
    bob.no_messages(Duration::from_millis(300)).await;
    // Acknowledged once written: deleted as usual.
    bob.client.ack(&[sent.id]).await.unwrap();
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 0);
}

#[tokio::test]
async fn held_messages_reach_a_recipient_that_reconnects_in_order_and_once() {
    let (server, alice, mut bob) = holding_relay_with_alice_and_bob().await;
    let sends: Vec<_> = (0..3).map(|n| send_in_background(&alice, "bob", client_id(), n)).collect();
    let first = bob.messages(3).await;
    let ids: Vec<i64> = first.iter().map(|m| m.id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    // Bob loses his connection before acknowledging: the held messages follow his catch-up.
    bob.reconnect(&server).await;
    let again = bob.messages_acknowledged(3).await;
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    for send in sends {
        assert!(ids.contains(&send.await.unwrap().unwrap().id));
    }
    bob.no_messages(Duration::from_millis(300)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 3);
}

#[tokio::test]
async fn a_recipient_that_leaves_has_its_held_messages_stored_before_newer_ones() {
    let (server, alice, mut bob) = holding_relay_with_alice_and_bob().await;
    let held: Vec<_> = (0..2).map(|n| send_in_background(&alice, "bob", client_id(), n)).collect();
    assert_eq!(bob.messages(2).await.len(), 2);
    bob.client.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bob is gone: this one is stored at once, and the two held before it with it.
    let newer = alice.client.send_raw("bob", &client_id(), &envelope(2)).await.unwrap();
    let mut ids = Vec::new();
    for send in held {
        ids.push(send.await.unwrap().unwrap().id);
    }
    ids.sort_unstable();
    ids.push(newer.id);
    assert!(ids[1] < newer.id, "{ids:?}");
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 3);
    let answer = bob.reconnect(&server).await;
    assert_eq!(answer.queued, 3);
    let got = bob.messages_acknowledged(3).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    bob.no_messages(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_resend_of_a_held_message_is_stored_once_and_pushed_once() {
    let (server, alice, mut bob) = holding_relay_with_alice_and_bob().await;
    let id = client_id();
    let first = send_in_background(&alice, "bob", id.clone(), 1);
    let pushed = bob.messages(1).await;
    // The sender, unanswered, sends it again: the held copy is stored, the resend matches it.
    let again = alice.client.send_raw("bob", &id, &envelope(1)).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.id, first.duplicate), (pushed[0].id, false));
    assert_eq!((again.id, again.duplicate), (pushed[0].id, true));
    bob.no_messages(Duration::from_millis(300)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);
}

#[tokio::test]
async fn only_the_recipient_acknowledges_a_held_message() {
    let server = TestServer::start_with(|config| config.write_behind = HOLD).await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    let carol = TestUser::register(&server, "carol").await;
    caught_up(&server).await;
    let send = send_in_background(&alice, "bob", client_id(), 1);
    let pushed = bob.messages(1).await;
    // Carol names Bob's message: nothing happens to it.
    carol.client.ack(&[pushed[0].id]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!send.is_finished(), "someone else's acknowledgement counted");
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 0);
    bob.client.ack(&[pushed[0].id]).await.unwrap();
    assert_eq!(send.await.unwrap().unwrap().id, pushed[0].id);
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 1);
}

#[tokio::test]
async fn a_graceful_shutdown_writes_what_is_held() {
    let (server, alice, mut bob) = holding_relay_with_alice_and_bob().await;
    let send = send_in_background(&alice, "bob", client_id(), 1);
    let pushed = bob.messages(1).await;
    let server = server.restart().await;
    // Written and answered while the sender was still connected.
    assert_eq!(send.await.unwrap().unwrap().id, pushed[0].id);
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(bob.reconnect(&server).await.queued, 1);
    assert_eq!(bob.messages_acknowledged(1).await[0].id, pushed[0].id);
}

/// An id released and registered anew while a message to its earlier holder is held: the
/// message goes as the stored ones do (its sender is told), never to the new holder.
#[tokio::test]
async fn messages_held_for_an_id_registered_anew_never_reach_its_new_holder() {
    let server = TestServer::start_with(|config| config.write_behind = HOLD).await;
    let carol = TestUser::register(&server, "carol").await;
    let mut earlier = TestUser::register(&server, "bob").await;
    // What `sotto admin release-user` opens, beside the running relay.
    let storage = sotto_server::storage::open(&server.database_url).await.unwrap();
    caught_up(&server).await;
    let send = send_in_background(&carol, "bob", client_id(), 1);
    assert_eq!(earlier.messages(1).await.len(), 1);
    // The operator releases bob; then someone takes the id.
    assert!(storage.release_user("bob").await.unwrap());
    storage.close().await;
    let mut bob = TestUser::register(&server, "bob").await;
    let error = send.await.unwrap().expect_err("the held message was not dropped");
    assert_eq!(error.code(), Some("unknown_user"), "{error:?}");
    bob.no_messages(Duration::from_millis(500)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
}

/// A message held from an id's earlier holder when the id is registered anew still reaches
/// its recipient, but its acknowledgement tells the new holder nothing, as for the stored ones
/// (`an_earlier_holders_queued_messages_tell_the_ids_new_holder_nothing`, auth.rs): the
/// receipt would name whom the earlier holder wrote to.
#[tokio::test]
async fn messages_held_from_an_id_registered_anew_tell_its_new_holder_nothing() {
    let (server, earlier, mut bob) = holding_relay_with_alice_and_bob().await;
    let storage = sotto_server::storage::open(&server.database_url).await.unwrap();
    let _held = send_in_background(&earlier, "bob", client_id(), 1);
    let pushed = bob.messages(1).await[0].id;
    // The operator releases alice; someone takes the id while the message is held.
    assert!(storage.release_user("alice").await.unwrap());
    storage.close().await;
    let mut alice = TestUser::register(&server, "alice").await;
    caught_up(&server).await;
    bob.client.ack(&[pushed]).await.unwrap();
    // The new holder's own message, acknowledged after: its receipt is the first she gets.
    let own = send_in_background(&alice, "bob", client_id(), 2);
    let own_id = bob.messages(1).await[0].id;
    bob.client.ack(&[own_id]).await.unwrap();
    assert_eq!(own.await.unwrap().unwrap().id, own_id);
    let receipts = alice.receipts().await;
    let told: Vec<i64> = receipts.iter().map(|receipt| receipt.id).collect();
    assert_eq!(told, [own_id], "the new holder was told of the earlier holder's message");
    assert_eq!(metric(&server, "sotto_messages_never_written_total").await, 2);
}
