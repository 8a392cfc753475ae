//! The `sotto serve` binary as an operator runs it: SIGKILL mid-stream loses no acknowledged
//! message, SIGTERM drains, `admin release-user` frees an id, logs carry no keys or ciphertext,
//! huge frames leave memory flat.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
// Relay processes are killed and reaped in `Drop`.
#![allow(clippy::zombie_processes)]

use std::collections::HashSet;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;
use serde_json::value::RawValue;
use sotto_client::relay::{Incoming, RelayClient};
use sotto_client::socketio::SocketIoClient;
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::wire::b64;
use sotto_protocol::{IdentityKeyPair, SignedPrekey, UserId};

const WAIT: Duration = Duration::from_secs(10);

struct Relay {
    child: Child,
    url: String,
    port: u16,
    stderr_path: std::path::PathBuf,
}

fn start(database: &str, port: u16, stderr_path: &std::path::Path) -> Relay {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", database])
        .args(["--events-per-second", "0", "--pair-messages-per-second", "0"])
        // Everything at trace, and the modules that log whole frames named one by one: a
        // more specific directive must not lift the relay's cap on them (`logs_carry_no_keys…`).
        .env(
            "RUST_LOG",
            "trace,socketioxide::client=trace,engineioxide::socket=trace,\
             tungstenite::protocol=trace,hyper::proto=trace",
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // Wait for this process's own "listening" line: a port merely answering could be another
    // test's relay (port 0 lets the relay pick a free one and say which).
    let mut child = child;
    for _ in 0..500 {
        let log = std::fs::read_to_string(stderr_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains("relay listening")) {
            let address = line.rsplit("address=").next().unwrap().trim();
            let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
            let url = format!("http://127.0.0.1:{port}");
            return Relay { child, url, port, stderr_path: stderr_path.to_owned() };
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sotto serve exited with {status}: {log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("sotto serve did not start");
}

impl Relay {
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..250 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no exit after SIGTERM");
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.stderr_path).unwrap().read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct User {
    id: UserId,
    identity: IdentityKeyPair,
}

async fn register(
    url: &str,
    name: &str,
) -> (User, RelayClient, tokio::sync::mpsc::UnboundedReceiver<sotto_client::socketio::Push>) {
    let mut rng = rand::rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPrekey::generate(&identity, 1, 1_767_225_600, &mut rng);
    let opks: Vec<_> = (0..5).map(|i| OneTimePrekey::generate(i, &mut rng).public()).collect();
    let id = UserId::parse(name).unwrap();
    let (client, pushes) = RelayClient::connect(url, WAIT).await.unwrap();
    client.register(&id, &identity, spk.public(), &opks).await.unwrap();
    (User { id, identity }, client, pushes)
}

fn envelope(marker: &[u8]) -> Box<RawValue> {
    let mut ciphertext = vec![0u8; 80];
    rand::rng().fill_bytes(&mut ciphertext);
    ciphertext[..marker.len()].copy_from_slice(marker);
    let mut dh = [4u8; 65];
    rand::rng().fill_bytes(&mut dh[1..]);
    RawValue::from_string(format!(
        r#"{{"version":1,"suite":1,"header":{{"dh":"{}","pn":0,"n":0}},"ciphertext":"{}"}}"#,
        b64(&dh),
        b64(&ciphertext)
    ))
    .unwrap()
}

/// The ids of the messages pushed until none came for `quiet`, each push acknowledged as a
/// client does (the relay's catch-up waits for acknowledgements after two pages).
async fn collect(
    client: &RelayClient,
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<sotto_client::socketio::Push>,
    quiet: Duration,
) -> Vec<i64> {
    let mut ids = Vec::new();
    while let Ok(Some(push)) = tokio::time::timeout(quiet, pushes.recv()).await {
        if let Incoming::Messages(messages) = Incoming::from_push(push) {
            let pushed: Vec<i64> = messages.iter().map(|m| m.id).collect();
            client.ack(&pushed).await.unwrap();
            ids.extend(pushed);
        }
    }
    ids
}

#[tokio::test]
async fn sigkill_mid_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let mut relay = start(&database, 0, &dir.path().join("1.log"));
    let port = relay.port;
    let (_alice, alice_client, _) = register(&relay.url, "alice").await;
    let (bob, bob_client, _) = register(&relay.url, "bob").await;
    bob_client.close();

    // Alice streams with up to 32 messages in flight; the relay is killed part-way.
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0u32;
        loop {
            let batch: Vec<_> = (0..32)
                .map(|_| {
                    n += 1;
                    let client = alice_client.clone();
                    tokio::spawn(async move {
                        client.send_raw("bob", &format!("m{n}"), &envelope(&n.to_be_bytes())).await
                    })
                })
                .collect();
            let mut failed = false;
            for task in batch {
                match task.await.unwrap() {
                    Ok(answer) => acked.push(answer.id),
                    Err(_) => failed = true,
                }
            }
            if failed || n > 20_000 {
                return acked;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.kill9();
    let acked = sender.await.unwrap();
    assert!(acked.len() > 100, "the stream was under way ({} acked)", acked.len());

    let relay = start(&database, port, &dir.path().join("2.log"));
    let (client, mut pushes) = RelayClient::connect(&relay.url, WAIT).await.unwrap();
    let answer = client.login(&bob.id, &bob.identity).await.unwrap();
    assert!(answer.queued >= acked.len());
    let received = collect(&client, &mut pushes, Duration::from_millis(1500)).await;
    let received_set: HashSet<i64> = received.iter().copied().collect();
    assert_eq!(received_set.len(), received.len(), "nothing twice");
    let lost: Vec<&i64> = acked.iter().filter(|id| !received_set.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());
    eprintln!(
        "sigkill: {} acknowledged before the kill, {} delivered after restart, 0 lost",
        acked.len(),
        received.len()
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let mut relay = start(&database, 0, &dir.path().join("1.log"));
    let port = relay.port;
    let (_alice, alice_client, _) = register(&relay.url, "alice").await;
    let (bob, bob_client, _) = register(&relay.url, "bob").await;
    bob_client.close();
    let mut tasks = Vec::new();
    for n in 0..200u32 {
        let client = alice_client.clone();
        tasks.push(tokio::spawn(async move {
            client.send_raw("bob", &format!("t{n}"), &envelope(&n.to_be_bytes())).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let status = relay.sigterm();
    assert!(status.success(), "exit status {status}");
    let mut acked = Vec::new();
    for task in tasks {
        if let Ok(answer) = task.await.unwrap() {
            acked.push(answer.id);
        }
    }
    assert!(relay.logs().contains("relay stopped"));
    let relay = start(&database, port, &dir.path().join("2.log"));
    let (client, mut pushes) = RelayClient::connect(&relay.url, WAIT).await.unwrap();
    client.login(&bob.id, &bob.identity).await.unwrap();
    let received: HashSet<i64> =
        collect(&client, &mut pushes, Duration::from_millis(800)).await.into_iter().collect();
    assert!(acked.iter().all(|id| received.contains(id)), "every acknowledged message survives");
}

#[tokio::test]
async fn release_user_frees_the_id_for_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let relay = start(&database, 0, &dir.path().join("1.log"));
    let (alice, alice_client, _) = register(&relay.url, "alice").await;
    let (_, bob_client, _) = register(&relay.url, "bob").await;
    alice_client.close();
    bob_client.send_raw("alice", "before-release", &envelope(b"x")).await.unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["admin", "release-user", "Alice", "--database", &database])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["admin", "release-user", "alice", "--database", &database])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a second release finds no user");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no user alice"));

    // The old keys no longer log in; new keys can register the id.
    let (client, _) = RelayClient::connect(&relay.url, WAIT).await.unwrap();
    assert!(client.login(&alice.id, &alice.identity).await.is_err());
    let (new_alice, _, _) = register(&relay.url, "alice").await;
    let bundle = bob_client.request_bundle(&new_alice.id).await.unwrap();
    assert!(bundle.identity().same_keys(new_alice.identity.public()));
    assert!(!bundle.identity().same_keys(alice.identity.public()));
}

#[tokio::test]
async fn logs_carry_no_keys_ciphertext_or_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let relay = start(&database, 0, &dir.path().join("1.log"));
    let (_, alice_client, _) = register(&relay.url, "alice").await;
    let (_, bob_client, mut bob_pushes) = register(&relay.url, "bob").await;
    let marked = envelope(b"SECRET-MARKER-1234567");
    let text = marked.get().to_owned();
    let sent = alice_client.send_raw("bob", "logcheck", &marked).await.unwrap();
    let _ = collect(&bob_client, &mut bob_pushes, Duration::from_millis(300)).await;
    bob_client.ack(&[sent.id]).await.unwrap();
    let bundle = alice_client.request_bundle(&UserId::parse("bob").unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = relay.logs();
    assert!(logs.len() > 500, "trace logging is on");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ciphertext = value["ciphertext"].as_str().unwrap();
    for secret in [
        &ciphertext[..20],
        &value["header"]["dh"].as_str().unwrap()[..20],
        &b64(bundle.identity().signing_key().as_bytes())[..20],
        &b64(bundle.signed_prekey().key.as_bytes())[..20],
    ] {
        let line = logs.lines().find(|line| line.contains(secret));
        assert!(line.is_none(), "the log contains {secret}: {line:?}");
    }
}

#[tokio::test]
async fn huge_frames_leave_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let relay = start(&database, 0, &dir.path().join("1.log"));
    // Warm up, then measure around 40 connections each sending a 32 MiB frame.
    let (_, _client, _) = register(&relay.url, "warm").await;
    let before = relay.rss_kb();
    for _ in 0..40 {
        let (client, _) = SocketIoClient::connect(&relay.url, WAIT).await.unwrap();
        let frame = format!("42[\"message:send\",\"{}\"]", "A".repeat(32 * 1024 * 1024));
        let _ = client.send_raw(frame);
        for _ in 0..100 {
            if !client.is_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!client.is_open());
    }
    let after = relay.rss_kb();
    eprintln!("rss before {before} kB, after 40 x 32 MiB frames {after} kB");
    assert!(after < before + 20 * 1024, "memory grew from {before} kB to {after} kB");
    let _ = relay.port;
}
