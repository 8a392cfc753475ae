//! Malformed payloads for every event, oversized frames on both transports, rate limits,
//! connections that hold a place without taking part (silent, trickling a head or a body,
//! reading nothing): each gets a clear error or a closed connection, and the relay carries on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sotto_client::relay::{Incoming, RelayClient};
use sotto_client::socketio::SocketIoClient;
use support::{TestServer, TestUser, WAIT, client_id, envelope, envelope_of_size};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn malformed_payloads_get_bad_request_for_every_event() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    TestUser::register(&server, "bob").await;
    let anonymous = RelayClient::connect(&server.url, WAIT).await.unwrap().0;
    let junk =
        [json!(null), json!(42), json!("text"), json!([1, 2]), json!({ "unexpected": true })];
    for event in ["auth:login", "user:register-key"] {
        for payload in &junk {
            let error = anonymous.call::<_, Value>(event, payload).await.unwrap_err();
            assert_eq!(error.code(), Some("bad_request"), "{event} {payload}");
        }
    }
    for event in ["user:request-key", "message:send", "message:ack", "message:status"] {
        for payload in &junk {
            let error = alice.client.call::<_, Value>(event, payload).await.unwrap_err();
            assert_eq!(error.code(), Some("bad_request"), "{event} {payload}");
        }
    }
    // Envelopes of the wrong shape.
    let good: Value = serde_json::from_str(envelope(1).get()).unwrap();
    let mut cases = Vec::new();
    for (field, value) in [
        ("version", json!(2)),
        ("suite", json!(7)),
        ("ciphertext", json!("not base64!")),
        ("ciphertext", json!("AAAA")),
        ("header", json!({ "dh": "short", "pn": 0, "n": 0 })),
        ("header", json!({ "dh": good["header"]["dh"], "pn": -1, "n": 0 })),
        ("extra", json!(1)),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        cases.push(bad);
    }
    for bad in cases {
        let error = alice
            .client
            .call::<_, Value>(
                "message:send",
                &json!({ "to": "bob", "id": client_id(), "envelope": bad }),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("bad_request"), "{bad}");
    }
    for id in ["", "has space", &"x".repeat(65)] {
        let error = alice
            .client
            .call::<_, Value>("message:send", &json!({ "to": "bob", "id": id, "envelope": good }))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("bad_request"), "client id {id:?}");
    }
    // Unknown events are answered when an answer is asked for, else ignored; the connection
    // stays usable either way.
    for client in [&anonymous, &alice.client] {
        let error = client.call::<_, Value>("no:such-event", &json!({})).await.unwrap_err();
        assert_eq!(error.code(), Some("bad_request"));
    }
    alice.client.socket().emit("no:such-event", &json!({})).unwrap();
    alice.client.socket().send_raw("42[\"message:send\"".into()).unwrap();
    alice.client.socket().send_raw("4299999999999999999999[\"x\"]".into()).unwrap();
    alice.client.socket().send_raw("not a packet".into()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.query_i64("SELECT COUNT(*) FROM messages").await, 0);
    let fresh = RelayClient::connect(&server.url, WAIT).await.unwrap().0;
    assert!(fresh.challenge().await.is_ok(), "the relay still answers");
}

#[tokio::test]
async fn too_large_envelopes_get_a_clear_error() {
    let server = TestServer::start().await;
    let alice = TestUser::register(&server, "alice").await;
    TestUser::register(&server, "bob").await;
    // Inside the frame limit but over the envelope limit.
    let big = envelope_of_size(1, 80_000);
    let error = alice.client.send_raw("bob", &client_id(), &big).await.unwrap_err();
    assert_eq!(error.code(), Some("too_large"));
    // The largest real ciphertext is fine.
    let largest = envelope_of_size(1, 32 * 1024 + 16);
    alice.client.send_raw("bob", &client_id(), &largest).await.unwrap();
}

#[tokio::test]
async fn oversized_websocket_frames_close_the_connection() {
    let server = TestServer::start().await;
    let (client, _) = SocketIoClient::connect(&server.url, WAIT).await.unwrap();
    let huge = format!("42[\"message:send\",\"{}\"]", "A".repeat(32 * 1024 * 1024));
    client.send_raw(huge).unwrap();
    for _ in 0..100 {
        if !client.is_open() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!client.is_open(), "the relay closes a connection that sends a 32 MiB frame");
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// Opens a long-polling session and returns its sid.
async fn polling_session(addr: std::net::SocketAddr) -> String {
    let (status, body) = support::http_get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.trim_start_matches('0')).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn oversized_long_polling_bodies_are_refused() {
    let server = TestServer::start().await;
    let sid = polling_session(server.addr).await;
    let body = format!("42[\"x\",\"{}\"]", "A".repeat(1024 * 1024));
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let _ = stream.write_all(body.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(status == 413 || status == 400, "expected a refusal, got {text:?}");
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn per_connection_and_per_pair_rate_limits() {
    let server = TestServer::start_with(|config| {
        config.limits.events_per_second = 0;
        config.limits.pair_messages_per_second = 5;
        config.limits.pair_messages_burst = 10;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    TestUser::register(&server, "bob").await;
    TestUser::register(&server, "carol").await;
    let mut limited = 0;
    // All at once: an answer may take as long as the recipient's acknowledgement (or the
    // write-behind's wait), long enough for the allowance to refill between sends one by one.
    let sends: Vec<(String, _)> = (0..15).map(|n| (client_id(), envelope(n))).collect();
    let sends = sends.iter().map(|(id, body)| alice.client.send_raw("bob", id, body));
    for result in futures_util::future::join_all(sends).await {
        match result {
            Ok(_) => {}
            Err(error) => {
                assert_eq!(error.code(), Some("rate_limited"));
                assert!(error.retryable());
                limited += 1;
            }
        }
    }
    assert_eq!(limited, 5, "a burst of 10, then refused");
    // Another recipient has its own allowance.
    alice.client.send_raw("carol", &client_id(), &envelope(1)).await.unwrap();

    let server = TestServer::start_with(|config| {
        config.limits.events_per_second = 10;
        config.limits.events_burst = 20;
    })
    .await;
    let client = RelayClient::connect(&server.url, WAIT).await.unwrap().0;
    let mut refused = 0;
    for _ in 0..30 {
        if let Err(error) = client.challenge().await {
            assert_eq!(error.code(), Some("rate_limited"));
            refused += 1;
        }
    }
    assert!((9..=11).contains(&refused), "refused {refused} of 30");
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_rejections_total{reason=\"rate_limited\"}"), "{metrics}");
}

#[tokio::test]
async fn a_full_recipient_queue_refuses_more() {
    let server = TestServer::start_with(|config| {
        config.limits.max_queue_per_recipient = 5;
        config.limits.pair_messages_per_second = 0;
    })
    .await;
    let alice = TestUser::register(&server, "alice").await;
    let mut bob = TestUser::register(&server, "bob").await;
    bob.client.close();
    for n in 0..5 {
        alice.client.send_raw("bob", &client_id(), &envelope(n)).await.unwrap();
    }
    let error = alice.client.send_raw("bob", &client_id(), &envelope(9)).await.unwrap_err();
    assert_eq!(error.code(), Some("queue_full"));
    // Once Bob takes delivery, there is room again.
    bob.reconnect(&server).await;
    let got = bob.messages(5).await;
    bob.client.ack(&got.iter().map(|m| m.id).collect::<Vec<_>>()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.client.send_raw("bob", &client_id(), &envelope(10)).await.unwrap();
}

/// A GET over a connection of its own: the status and the whole response, or `None` when the
/// relay closed the connection without answering HTTP.
async fn get_over_new_connection(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.ok()?.ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

/// `/healthz` over a connection of its own: the status, or `None` when the relay closed the
/// connection without answering HTTP.
async fn health_over_new_connection(addr: std::net::SocketAddr) -> Option<u16> {
    get_over_new_connection(addr, "/healthz").await.map(|(status, _)| status)
}

/// Past `max_connections` open connections a new one is answered 503 and closed as soon as it
/// is accepted (counted as `connection_limit`); those already open go on, and once one closes
/// the next connection is served. The open connections and the cap are in the metrics.
#[tokio::test]
async fn connections_past_the_cap_are_closed_at_the_door_until_one_closes() {
    let server = TestServer::start_with(|config| config.limits.max_connections = 3).await;
    // Three connections that have sent nothing yet hold every place.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Refused: told so over HTTP (503) and closed, before it had sent anything.
    assert_eq!(health_over_new_connection(server.addr).await, Some(503), "a fourth was served");
    assert_eq!(health_over_new_connection(server.addr).await, Some(503), "a fifth was served");
    // A client is told the relay is full, not that the connection broke.
    let Err(error) = RelayClient::connect(&server.url, WAIT).await else {
        panic!("a client got past the cap");
    };
    assert!(error.to_string().contains("503"), "{error}");
    assert!(error.to_string().contains("the relay is full"), "{error}");

    // One leaves: its place is given to the next connection.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    while health_over_new_connection(server.addr).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "the freed place was never given");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The health check's connection may not be given back yet: a refusal is answered 503.
    let metrics = loop {
        match get_over_new_connection(server.addr, "/metrics").await {
            Some((200, metrics)) => break metrics,
            other => assert!(matches!(other, Some((503, _)) | None), "{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the metrics were never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("sotto_rejections_total{reason=\"connection_limit\"} ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(refused >= 3, "{refused} refusals counted:\n{metrics}");
    // Two idle connections and the one reading the metrics, of three.
    assert!(metrics.contains("\nsotto_tcp_connections 3\n"), "{metrics}");
    assert!(metrics.contains("\nsotto_connection_limit 3\n"), "{metrics}");
    // The idle connections still there are still served.
    let mut held = idle.pop().unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    held.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // And a client can log in once a place is free (the last idle one leaves, so there is
    // one even while the connections just served are still being given back).
    drop(held);
    drop(idle);
    let alice = TestUser::register(&server, "alice").await;
    assert!(alice.client.is_open());
}

/// A connection that sends nothing after connecting is closed once `first_byte_within` has
/// passed, and its place under the cap is given back: connecting and saying nothing cannot
/// hold the relay's places.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_and_gives_its_place_back() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 2;
        config.limits.first_byte_within = Duration::from_millis(300);
    })
    .await;
    // Two silent connections take both places.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let ended = tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("never closed");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    }
    served_again_and_outlived_by_a_client(&server, Duration::from_millis(600)).await;
}

/// Reads until the relay closes `stream` and returns what it read, or fails the test after
/// `WAIT`.
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, what: &str) -> Vec<u8> {
    let mut chunk = [0u8; 1024];
    let mut read = Vec::new();
    let closed = async {
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                return;
            }
            read.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, closed).await.unwrap_or_else(|_| panic!("{what} was never closed"));
    read
}

/// A client has `request_head_within` to send a whole request head, from connecting and
/// again after each answer on a kept-alive connection; past it the connection is closed and
/// its place under the cap given back. So neither saying nothing, nor trickling a head a byte
/// at a time (slowloris), nor an idle keep-alive connection can hold the relay's places.
#[tokio::test]
async fn connections_that_do_not_send_a_request_head_in_time_are_closed_and_give_their_place_back()
{
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 3;
        config.limits.request_head_within = Duration::from_secs(2);
    })
    .await;
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let trickling = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut kept_alive = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The kept-alive one is answered, then says nothing more.
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 512];
    let read = tokio::time::timeout(WAIT, kept_alive.read(&mut answer)).await.unwrap().unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", &answer[..read]);
    // Every place is taken.
    assert_eq!(health_over_new_connection(server.addr).await, Some(503));

    // The trickler sends a byte of a header every 50 ms and never ends it: it is cut off all
    // the same, though it never stops sending.
    let (mut trickle_read, mut trickle_write) = trickling.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        if trickle_write.write_all(head).await.is_err() {
            return;
        }
        while trickle_write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    until_closed(&mut trickle_read, "the trickling connection").await;
    trickle.abort();
    let mut silent = silent;
    until_closed(&mut silent, "the silent connection").await;
    until_closed(&mut kept_alive, "the idle kept-alive connection").await;

    served_again_and_outlived_by_a_client(&server, Duration::from_millis(2_500)).await;
}

/// Once its head is in, a request has `request_within` to be answered, its body included: a
/// body trickled a byte at a time is answered 408 and its connection closed, though it never
/// stops sending, and the connection's place is given back.
#[tokio::test]
async fn a_request_body_sent_too_slowly_is_answered_408_and_gives_its_place_back() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 2;
        config.limits.request_within = Duration::from_secs(1);
    })
    .await;
    let sid = polling_session(server.addr).await;
    // A silent connection holds one place (its own deadline is 10 s away), the trickler the
    // other.
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut answer, mut body) =
        tokio::net::TcpStream::connect(server.addr).await.unwrap().into_split();
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: text/plain\r\nContent-Length: 10000\r\n\r\n",
        server.addr
    );
    body.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        while body.write_all(b"4").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(health_over_new_connection(server.addr).await, Some(503), "a place was free");
    let answer = until_closed(&mut answer, "the connection trickling a body").await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // The trickler's place is given back: served while the silent one still holds the other.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        if let Some((200, metrics)) = get_over_new_connection(server.addr, "/metrics").await {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "the trickler's place was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let counted = "sotto_rejections_total{reason=\"request_timeout\"} 1\n";
    assert!(metrics.contains(counted), "{metrics}");
    drop(silent);
    served_again_and_outlived_by_a_client(&server, Duration::from_millis(1_500)).await;
}

/// A client that stops reading (a frozen tab, a link that stalled) leaves the relay's writes
/// to it waiting; past `stalled_write_within` without progress the relay closes the connection
/// (its place and buffers given back) rather than waiting for its heartbeat to fail, and
/// nothing is lost: reconnected, the client gets everything, in order.
#[tokio::test]
async fn a_connection_whose_client_reads_nothing_is_closed_and_catches_up_later() {
    const MESSAGES: u32 = 400;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_host = listener.local_addr().unwrap().to_string();
    let server = TestServer::start_with(|config| {
        config.limits.stalled_write_within = Duration::from_secs(1);
        // Neither the allowance of unacknowledged pushes nor the outgoing buffer ends the
        // connection first: 400 pushes of 16 KiB fit in both.
        config.limits.max_unacknowledged_push_bytes = 64 * 1024 * 1024;
        config.limits.pair_messages_per_second = 0;
        config.limits.events_per_second = 0;
        // Bob logs in through the proxy, so his login is signed for the proxy's address.
        config.public_hosts.push(proxy_host);
    })
    .await;
    // Bob reads nothing more: 6.4 MB of pushes are more than the relay's socket (4 MiB at
    // most) and the proxy's hold, so the relay's writes to him stop making progress.
    let (alice, mut bob, proxy, sent) =
        support::alice_sends_while_bob_stops_reading(&server, listener, MESSAGES).await;
    // The relay gives bob's connection up: left open are alice's and the one asking.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = server.get("/metrics").await;
        if metrics.contains("\nsotto_tcp_connections 2\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "bob's connection was kept:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("sotto_rejections_total{reason=\"stalled_writes\"} 1\n"), "{metrics}");
    // What reaches bob before the end is the start of what alice sent, with no gap.
    proxy.resume();
    let mut received = Vec::new();
    while let Some(push) = bob.next(WAIT).await {
        if let Incoming::Messages(messages) = push {
            received.extend(messages.iter().map(|m| m.id));
        }
    }
    assert!(!bob.client.is_open(), "the relay closed the connection that read nothing");
    assert!(received.len() < sent.len(), "{} of {} pushes arrived", received.len(), sent.len());
    assert_eq!(received, sent[..received.len()], "no message overtook a missed one");
    // Reconnected, bob gets everything, in order; alice was served throughout.
    bob.reconnect(&server).await;
    let rest: Vec<i64> = bob.messages_acknowledged(sent.len()).await.iter().map(|m| m.id).collect();
    assert_eq!(rest, sent, "everything alice sent, in order");
    assert!(alice.client.is_open());
}

/// Once closed connections have given their places back, the relay serves again; and a client
/// that speaks at once (logs in over a WebSocket) is still served `later`, past the deadlines.
async fn served_again_and_outlived_by_a_client(server: &TestServer, later: Duration) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while health_over_new_connection(server.addr).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "the places were never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = TestUser::register(server, "alice").await;
    tokio::time::sleep(later).await;
    assert!(alice.client.is_open());
    alice.client.status(&[1]).await.unwrap();
}
