//! Fault campaign on one node: many real clients (each its own identity, SQLite store, sessions
//! and outbox, as `sotto chat` keeps them) chat in pairs at a steady rate while the relay
//! process is killed with SIGKILL and restarted, and clients are killed at random points (their
//! tasks aborted mid-send, mid-receive, mid-transaction) and started again from their stores.
//! Afterwards every message a sender's history holds must be in its recipient's history exactly
//! once.
//!
//! CI runs a short campaign. The full one from the security issue:
//!
//! ```text
//! SOTTO_FAULT_CONNECTIONS=2000 SOTTO_FAULT_RATE=500 SOTTO_FAULT_SECONDS=60 \
//!     cargo test --release -p sotto --test fault_campaign -- --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
#![allow(clippy::print_stdout)] // the campaign reports its figures
// The relay process is killed and reaped explicitly.
#![allow(clippy::zombie_processes)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use sotto_client::client::Client;
use sotto_protocol::UserId;
use tokio::task::JoinHandle;

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The campaign's size.
struct Scale {
    /// Clients connected at once (half of them send to the other half and back).
    connections: usize,
    /// Messages per second over all clients.
    rate: u64,
    /// How long messages are sent while faults happen.
    seconds: u64,
}

impl Scale {
    fn from_env() -> Self {
        Self {
            connections: setting("SOTTO_FAULT_CONNECTIONS", 60) as usize & !1,
            rate: setting("SOTTO_FAULT_RATE", 60),
            seconds: setting("SOTTO_FAULT_SECONDS", 8),
        }
    }
}

/// `sotto serve` as a child process on a fixed port and database, so it can be killed and
/// started again where clients expect it.
struct RelayProcess {
    child: Option<Child>,
    port: u16,
    database: String,
}

impl RelayProcess {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let database = format!("sqlite:{}", dir.join("relay.db").display());
        let mut relay = Self { child: None, port, database };
        relay.spawn();
        relay
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(SOTTO)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database", &self.database])
            // The campaign's pairs talk faster than a person, and all its users register from
            // one address; the limits are not under test.
            .args(["--pair-messages-per-second", "1000", "--events-per-second", "5000"])
            .args(["--registrations-per-hour", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the relay did not start");
    }

    /// SIGKILL: no graceful shutdown, whatever is in flight is cut off.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One client: an identity in `home` that sends to `peer`.
#[derive(Clone)]
struct Device {
    home: PathBuf,
    peer: UserId,
}

/// Figures the devices share.
#[derive(Default)]
struct Tally {
    composed: AtomicU64,
    reconnects: AtomicU64,
    client_kills: AtomicU64,
}

/// Runs a device until aborted: connects (again and again, as the relay comes and goes), sends
/// its outbox, handles pushes, and composes a message every `period` while `sending` is set.
async fn run_device(
    device: Device,
    server: String,
    period: Duration,
    sending: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let client = loop {
        match Client::open(&device.home).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut next_send =
        tokio::time::Instant::now() + period.mul_f64(rand::rng().random_range(0.0..1.0));
    loop {
        let connected = client.connect(&server).await;
        let Ok((relay, mut pushes, _)) = connected else {
            let backoff = rand::rng().random_range(50..250);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            continue;
        };
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        if client.flush_outbox(&relay).await.is_ok() {
            let _ = client.refresh_delivery(&relay).await;
            loop {
                tokio::select! {
                    push = pushes.recv() => {
                        let Some(push) = push else { break };
                        if client.handle(&relay, push).await.is_err() {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(next_send), if sending.load(Ordering::Relaxed) => {
                        next_send += period;
                        let text = format!("{:016x}", rand::rng().random::<u64>());
                        match client.compose(&device.peer, &text).await {
                            Ok(_) => tally.composed.fetch_add(1, Ordering::Relaxed),
                            Err(error) => panic!("compose failed: {error}"),
                        };
                        if client.flush_outbox(&relay).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        relay.close();
    }
}

async fn register_all(server: &str, devices: &[Device], users: &[UserId]) {
    let mut tasks = Vec::new();
    for (device, user) in devices.iter().zip(users) {
        let (home, server, user) = (device.home.clone(), server.to_owned(), user.clone());
        tasks.push(tokio::spawn(async move {
            let (client, relay, _) = Client::register(&home, &server, &user).await.unwrap();
            relay.close();
            client.close().await;
        }));
        if tasks.len() == 50 {
            for task in tasks.drain(..) {
                task.await.unwrap();
            }
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Opens a store, waiting while the file descriptors of just-aborted clients are let go
/// (their database connections close on threads of their own).
async fn open_when_possible(home: &Path) -> Client {
    let mut attempts = 0;
    loop {
        match Client::open(home).await {
            Ok(client) => return client,
            Err(error) if attempts < 100 => {
                attempts += 1;
                if attempts == 1 {
                    println!("opening {} waits: {error}", home.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{}: {error}", home.display()),
        }
    }
}

/// What the stores say once everything settled.
struct Outcome {
    sent: usize,
    delivered: usize,
    lost: usize,
    shown_twice: usize,
    undecryptable: usize,
    failed: usize,
    unsent: usize,
}

async fn inspect(devices: &[Device], users: &[UserId]) -> Outcome {
    let mut outgoing: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut incoming: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut outcome = Outcome {
        sent: 0,
        delivered: 0,
        lost: 0,
        shown_twice: 0,
        undecryptable: 0,
        failed: 0,
        unsent: 0,
    };
    for (device, user) in devices.iter().zip(users) {
        let client = open_when_possible(&device.home).await;
        outcome.unsent += client.store().outbox().await.unwrap().len();
        for message in client.store().history(device.peer.as_str(), i64::MAX).await.unwrap() {
            match (message.outgoing, message.status.as_str(), message.body) {
                (true, "failed", _) => outcome.failed += 1,
                (_, "undecryptable", _) => outcome.undecryptable += 1,
                (true, _, Some(text)) => outgoing
                    .entry((user.to_string(), device.peer.to_string()))
                    .or_default()
                    .push(text),
                (false, _, Some(text)) => incoming
                    .entry((device.peer.to_string(), user.to_string()))
                    .or_default()
                    .push(text),
                _ => {}
            }
        }
        client.close().await;
    }
    for (pair, texts) in &outgoing {
        let received = incoming.get(pair).cloned().unwrap_or_default();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for text in &received {
            *counts.entry(text).or_default() += 1;
        }
        for text in texts {
            outcome.sent += 1;
            match counts.get(text.as_str()).copied().unwrap_or(0) {
                0 => outcome.lost += 1,
                1 => outcome.delivered += 1,
                _ => {
                    outcome.delivered += 1;
                    outcome.shown_twice += 1;
                }
            }
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_lost_or_shown_twice_while_the_relay_and_clients_are_killed() {
    let scale = Scale::from_env();
    // Client stores on tmpfs when there is one: the clients' disks are not under test.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let relay_dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(relay_dir.path());
    let server = relay.url();

    let users: Vec<UserId> =
        (0..scale.connections).map(|i| UserId::parse(&format!("user{i}")).unwrap()).collect();
    let devices: Vec<Device> = (0..scale.connections)
        .map(|i| Device {
            home: dir.path().join(format!("user{i}")),
            // 0↔1, 2↔3, …: each pair talks both ways.
            peer: users[i ^ 1].clone(),
        })
        .collect();
    let started = Instant::now();
    register_all(&server, &devices, &users).await;
    let registration = started.elapsed();

    let tally = Arc::new(Tally::default());
    let sending = Arc::new(AtomicBool::new(true));
    // Each device sends at rate / connections.
    let period = Duration::from_secs_f64(scale.connections as f64 / scale.rate as f64);
    let spawn = |device: Device| -> JoinHandle<()> {
        tokio::spawn(run_device(device, server.clone(), period, sending.clone(), tally.clone()))
    };
    let mut running: Vec<JoinHandle<()>> = devices.iter().cloned().map(spawn).collect();

    // Faults: the relay is killed at one third and two thirds of the run; about one client in
    // twenty is killed every second and started again half a second later.
    let campaign = Duration::from_secs(scale.seconds);
    let kills_at = [campaign / 3, campaign * 2 / 3];
    let mut server_kills = 0;
    let mut restarting: Vec<(Instant, usize)> = Vec::new();
    let begun = Instant::now();
    let kill_every = Duration::from_secs_f64(20.0 / scale.connections as f64);
    let mut next_client_kill = begun + kill_every;
    while begun.elapsed() < campaign {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if server_kills < kills_at.len() && begun.elapsed() >= kills_at[server_kills] {
            relay.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            relay.spawn();
            server_kills += 1;
        }
        if Instant::now() >= next_client_kill {
            next_client_kill += kill_every;
            let victim = rand::rng().random_range(0..running.len());
            // One process per store, as one person runs one client: a victim already waiting
            // to start again is left alone.
            if restarting.iter().any(|(_, waiting)| *waiting == victim) {
                continue;
            }
            running[victim].abort();
            tally.client_kills.fetch_add(1, Ordering::Relaxed);
            restarting.push((Instant::now() + Duration::from_millis(500), victim));
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = restarting.into_iter().partition(|(at, _)| *at <= now);
        restarting = later;
        for (_, victim) in due {
            running[victim] = spawn(devices[victim].clone());
        }
    }
    for (_, victim) in restarting {
        running[victim] = spawn(devices[victim].clone());
    }

    // Settle: no new messages, no faults; every outbox drains and every queue empties.
    sending.store(false, Ordering::Relaxed);
    let settle_started = Instant::now();
    let mut outcome = None;
    while settle_started.elapsed() < Duration::from_secs(60 + scale.seconds) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let queued = queue_depth(&server).await;
        if queued == Some(0) {
            for task in &running {
                task.abort();
            }
            // Wait for the aborted tasks to let go of their stores.
            for task in running.drain(..) {
                let _ = task.await;
            }
            let settled = inspect(&devices, &users).await;
            if settled.unsent == 0 && settled.lost == 0 {
                outcome = Some(settled);
                break;
            }
            running = devices.iter().cloned().map(spawn).collect();
        }
    }
    for task in &running {
        task.abort();
    }
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => inspect(&devices, &users).await,
    };
    println!(
        "fault campaign: {} connections, {} msg/s for {} s; registration {:.1} s; relay killed {} \
         times, clients killed {} times, {} connections made; sent {}, delivered {}, lost {}, \
         shown twice {}, undecryptable {}, failed {}, still unsent {}; settled in {:.1} s",
        scale.connections,
        scale.rate,
        scale.seconds,
        registration.as_secs_f64(),
        server_kills,
        tally.client_kills.load(Ordering::Relaxed),
        tally.reconnects.load(Ordering::Relaxed),
        outcome.sent,
        outcome.delivered,
        outcome.lost,
        outcome.shown_twice,
        outcome.undecryptable,
        outcome.failed,
        outcome.unsent,
        settle_started.elapsed().as_secs_f64(),
    );
    assert_eq!(server_kills, 2);
    assert!(tally.client_kills.load(Ordering::Relaxed) > 0);
    assert!(
        outcome.sent as u64 >= tally.composed.load(Ordering::Relaxed) / 2,
        "messages were sent"
    );
    assert!(outcome.sent > 0);
    assert_eq!(outcome.lost, 0, "lost messages");
    assert_eq!(outcome.shown_twice, 0, "messages shown twice");
    assert_eq!(outcome.undecryptable, 0, "undecryptable messages");
    assert_eq!(outcome.failed, 0, "failed messages");
    assert_eq!(outcome.unsent, 0, "messages left in outboxes");
}

/// The relay's queue depth from `/metrics`, if it answers.
async fn queue_depth(server: &str) -> Option<u64> {
    let address = server.trim_start_matches("http://").to_owned();
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .await
    .ok()??;
    body.lines()
        .find(|line| line.starts_with("sotto_queue_depth"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
}
