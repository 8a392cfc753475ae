//! A black-box socket fuzzer against a running `sotto serve`: junk TCP, malformed HTTP and
//! upgrade requests, malformed Engine.IO and Socket.IO packets, random events with random
//! payloads (logged in and not), binary attachments, huge acknowledgement ids, 32 MiB frames and
//! junk long-polling bodies, from several connections at once. Afterwards the relay must still
//! be running, healthy, serving real clients, and its memory must not have grown with the junk.
//!
//! CI runs it for a few seconds. The campaign from the security issue:
//!
//! ```text
//! SOTTO_SOCKET_FUZZ_SECONDS=600 cargo test --release -p sotto --test socket_fuzzer -- --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
#![allow(clippy::print_stdout)] // the campaign reports its figures
// The relay process is killed and reaped in `Drop`.
#![allow(clippy::zombie_processes)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use sotto_client::client::{Client, Event};
use sotto_protocol::UserId;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");
const EVENTS: &[&str] = &[
    "auth:challenge",
    "auth:login",
    "user:register-key",
    "user:request-key",
    "user:identity",
    "message:send",
    "message:ack",
    "message:status",
    "user:public-key",
    "message:receive",
    "",
    "constructor",
    "__proto__",
];

struct RelayProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let database = format!("sqlite:{}", dir.path().join("relay.db").display());
        let child = Command::new(SOTTO)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", &database])
            // Registrations are part of the junk, all from one address; the clients that check
            // the relay still works afterwards must be able to register too.
            .args(["--registrations-per-hour", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the relay did not start");
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    fn healthz(&self) -> Option<String> {
        self.get("/healthz")?.lines().next().map(str::to_owned)
    }

    /// Open Socket.IO connections, from `/metrics`.
    fn open_connections(&self) -> Option<u64> {
        self.get("/metrics")?
            .lines()
            .find(|line| line.starts_with("sotto_connections "))?
            .split_whitespace()
            .last()?
            .parse::<f64>()
            .ok()
            .map(|value| value as u64)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    frames: AtomicU64,
    huge_frames: AtomicU64,
    raw: AtomicU64,
    polling: AtomicU64,
}

fn random_string(rng: &mut StdRng) -> String {
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(0..5_000),
        _ => rng.random_range(0..40),
    };
    (0..len)
        .map(|_| match rng.random_range(0..6) {
            0 => char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}'),
            _ => char::from(rng.random_range(0x20..0x7f_u8)),
        })
        .collect()
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 4 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!(u64::MAX),
        5 => Value::String(random_string(rng)),
        6 => {
            Value::Array((0..rng.random_range(0..6)).map(|_| random_json(rng, depth + 1)).collect())
        }
        _ => {
            let keys = [
                "userId",
                "to",
                "id",
                "ids",
                "envelope",
                "identity",
                "signature",
                "signedPrekey",
                "oneTimePrekeys",
                "version",
                "suite",
                "header",
                "ciphertext",
            ];
            let mut object = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                let key = if rng.random_bool(0.7) {
                    keys[rng.random_range(0..keys.len())].to_owned()
                } else {
                    random_string(rng)
                };
                object.insert(key, random_json(rng, depth + 1));
            }
            Value::Object(object)
        }
    }
}

/// One junk Engine.IO / Socket.IO packet.
fn junk_packet(rng: &mut StdRng) -> Message {
    let event = EVENTS[rng.random_range(0..EVENTS.len())];
    let text = match rng.random_range(0..16) {
        0 => String::new(),
        1 => format!("{}", rng.random_range(0..10)),
        2 => "2probe".to_owned(),
        3 => "5".to_owned(),
        4 => format!("40{}", random_string(rng)),
        5 => "40/admin,".to_owned(),
        6 => format!("42{}", random_string(rng)),
        7 => format!("42[\"{event}\""),
        8 => format!("43{}[{}]", rng.random::<u64>(), random_json(rng, 0)),
        9 => format!("451-[\"{event}\",{{\"_placeholder\":true,\"num\":0}}]"),
        10 => format!("4{}[\"{event}\"]", rng.random_range(0..10)),
        11 => format!("429999999999999999999999[\"{event}\",{}]", random_json(rng, 0)),
        12 => return Message::Binary(random_string(rng).into_bytes().into()),
        _ => {
            let ack = if rng.random_bool(0.7) {
                rng.random_range(0..1000).to_string()
            } else {
                String::new()
            };
            let mut args = vec![json!(event)];
            for _ in 0..rng.random_range(0..3) {
                args.push(random_json(rng, 0));
            }
            format!("42{ack}{}", Value::Array(args))
        }
    };
    Message::text(text)
}

/// A websocket session: the handshake (sometimes skipped or broken), then junk.
async fn websocket_session(port: u16, rng: &mut StdRng, tally: &Tally) {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let Ok(Ok((socket, _))) =
        tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await
    else {
        return;
    };
    tally.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    // Drain whatever the relay says, so it never blocks on us.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    if rng.random_bool(0.8) {
        let _ = sink.send(Message::text("40")).await;
    }
    for _ in 0..rng.random_range(1..60) {
        let message = if rng.random_range(0..400) == 0 {
            tally.huge_frames.fetch_add(1, Ordering::Relaxed);
            let mut huge =
                String::from("42[\"message:send\",{\"to\":\"bob\",\"id\":\"x\",\"envelope\":\"");
            huge.push_str(&"A".repeat(32 << 20));
            huge.push_str("\"}]");
            Message::text(huge)
        } else {
            junk_packet(rng)
        };
        if sink.send(message).await.is_err() {
            break;
        }
        tally.frames.fetch_add(1, Ordering::Relaxed);
    }
    if rng.random_bool(0.5) {
        let _ = sink.close().await;
    }
    drop(sink);
    reader.abort();
}

/// Junk that is not a websocket: raw bytes, broken HTTP, junk polling bodies.
async fn raw_session(port: u16, rng: &mut StdRng, tally: &Tally) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
    let request = match rng.random_range(0..5) {
        0 => (0..rng.random_range(0..4096)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>(),
        1 => format!(
            "GET /socket.io/?EIO={}&transport={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            rng.random_range(0..6),
            random_string(rng),
            random_string(rng)
        )
        .into_bytes(),
        2 => {
            tally.polling.fetch_add(1, Ordering::Relaxed);
            let body = format!("{}\u{1e}{}", junk_text(rng), junk_text(rng));
            format!(
                "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: x\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                random_string(rng).replace(' ', ""),
                body.len()
            )
            .into_bytes()
        }
        3 => b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        _ => format!("{} / HTTP/1.1\r\n{}\r\n\r\n", random_string(rng), random_string(rng))
            .into_bytes(),
    };
    tally.raw.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&request)).await;
}

fn junk_text(rng: &mut StdRng) -> String {
    match junk_packet(rng) {
        Message::Text(text) => text.as_str().to_owned(),
        _ => random_string(rng),
    }
}

async fn real_clients_still_chat(server: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (alice_user, bob_user) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
    let (alice, alice_relay, _) =
        Client::register(&dir.path().join("alice"), server, &alice_user).await.unwrap();
    let (bob, _, _) = Client::register(&dir.path().join("bob"), server, &bob_user).await.unwrap();
    let (bob_relay, mut pushes, _) = bob.connect(server).await.unwrap();
    alice.compose(&bob_user, "still standing").await.unwrap();
    alice.flush_outbox(&alice_relay).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let push =
            tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await.unwrap().unwrap();
        let events = bob.handle(&bob_relay, push).await.unwrap();
        if events
            .iter()
            .any(|e| matches!(e, Event::Received(m) if m.body.as_deref() == Some("still standing")))
        {
            return;
        }
        assert!(Instant::now() < deadline, "the message did not arrive");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_on_every_layer_neither_crashes_nor_grows_the_relay() {
    let seconds: u64 =
        std::env::var("SOTTO_SOCKET_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let seed: u64 = std::env::var("SOTTO_SOCKET_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("socket fuzzer seed {seed} (SOTTO_SOCKET_FUZZ_SEED to repeat)");
    let mut relay = RelayProcess::start();
    let port = relay.port;
    let tally = Arc::new(Tally::default());
    let duration = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut baseline_kib = None;
    let mut workers = Vec::new();
    for worker in 0..8_u64 {
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            use rand::SeedableRng;
            let mut rng = StdRng::seed_from_u64(seed ^ worker.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            while started.elapsed() < duration {
                if rng.random_bool(0.75) {
                    websocket_session(port, &mut rng, &tally).await;
                } else {
                    raw_session(port, &mut rng, &tally).await;
                }
            }
        }));
    }
    // The baseline is taken once the relay has warmed up (allocator arenas, caches).
    let mut samples = Vec::new();
    let mut next_sample = started;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(relay.alive(), "the relay died");
        if baseline_kib.is_none() && started.elapsed() >= duration / 5 {
            baseline_kib = Some(relay.rss_kib());
        }
        if Instant::now() >= next_sample {
            samples.push((relay.rss_kib() / 1024, relay.open_connections()));
            next_sample += duration / 10;
        }
    }
    println!("relay RSS (MiB) and open connections through the run: {samples:?}");
    for worker in workers {
        worker.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(relay.alive(), "the relay died");
    let final_kib = relay.rss_kib();
    let baseline_kib = baseline_kib.unwrap_or(final_kib);
    println!(
        "socket fuzzer: {} s, {} websocket connections, {} frames ({} of 32 MiB), {} raw/HTTP \
         sessions ({} polling), relay RSS {} KiB after warm-up, {} KiB at the end",
        seconds,
        tally.connections.load(Ordering::Relaxed),
        tally.frames.load(Ordering::Relaxed),
        tally.huge_frames.load(Ordering::Relaxed),
        tally.raw.load(Ordering::Relaxed),
        tally.polling.load(Ordering::Relaxed),
        baseline_kib,
        final_kib,
    );
    assert!(tally.frames.load(Ordering::Relaxed) > 100, "the fuzzer ran");
    assert_eq!(relay.healthz().as_deref(), Some("HTTP/1.1 200 OK"));
    // Flat: no more than 64 MiB above the warmed-up figure, whatever the duration.
    assert!(final_kib < baseline_kib + 64 * 1024, "memory grew: {baseline_kib} → {final_kib} KiB");
    real_clients_still_chat(&format!("http://127.0.0.1:{port}")).await;
}
