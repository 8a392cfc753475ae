//! `sotto bench`: drives a running relay over real sockets, as its operators would measure it.
//!
//! Every bench client registers with its own identity key and logs in with a signed
//! challenge, and every message goes the relay's whole way: checked, stored durably, its sender
//! answered, pushed, acknowledged by its recipient and deleted. Envelopes carry random
//! ciphertext of the documented shape (the relay never decrypts, so the cost is the same).
//!
//! Modes: throughput (`--pairs N --window W`), fixed rate (`--rate R`), idle connections
//! (`--idle C`). With `--server-pid` the bench reads the relay's CPU time and memory from
//! `/proc` and reports CPU microseconds per delivered message and memory per connection.
//!
//! With `--also-server` the clients are spread over several relays of one cluster (client `i`
//! on relay `i mod n`); with two relays every sender is on the first and every recipient on
//! the second, so each message crosses between nodes. Give every relay's `--server-pid` and
//! the figures are their sums.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{Value, json};
use sotto_client::relay::{Incoming, RelayClient, RelayError};
use sotto_client::socketio::{Push, TransportError};
use sotto_protocol::prekeys::SignedPrekey;
use sotto_protocol::wire::b64;
use sotto_protocol::{IdentityKeyPair, UserId};
use tokio::sync::{Semaphore, mpsc};

/// `sotto bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Sender → receiver pairs (2 × N clients).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Padded plaintext size in bytes: a power of two from 64 to 32768 (the ciphertext is 16
    /// bytes more).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages in flight (sent, not yet received) per pair, in throughput mode.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Fixed total send rate (messages per second, open loop) instead of maximum throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (sent and received, not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for messages still in flight after sending stops.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Instead: open C idle, authenticated connections and report memory per connection.
    #[arg(long, value_name = "C")]
    idle: Option<usize>,
    /// Idle mode: connect without registering or logging in (a bare Socket.IO connection).
    #[arg(long)]
    anonymous: bool,
    /// Idle mode: before the connections log in, queue N messages (of `--size`) for each user,
    /// so that every connection is first pushed its backlog (and acknowledges it), as after a
    /// night offline.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "anonymous")]
    backlog: usize,
    /// Idle mode: seconds the connections sit idle before the relay's memory is read (and
    /// before they count as held). Longer shows what the relay gives back once quiet.
    #[arg(long, value_name = "S", default_value_t = 3)]
    settle: u64,
    /// Further relays of the same cluster to spread the clients over (repeatable): client `i`
    /// connects to relay `i mod n`, the `--server` first, so with one more relay every message
    /// goes from the first node to the second.
    #[arg(long = "also-server", value_name = "URL")]
    also_servers: Vec<String>,
    /// The relay's process id, to read its CPU time and memory from /proc (repeatable, or
    /// comma-separated, for every relay of a cluster: the figures are then their sums).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Connections opened at once during set-up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// The relay processes measured through `/proc` (none without `--server-pid`).
struct Relays {
    pids: Vec<String>,
}

impl Relays {
    fn new(pids: &[u32]) -> Self {
        Self { pids: pids.iter().map(u32::to_string).collect() }
    }

    /// The relays' CPU seconds together; `None` without pids or when one cannot be read.
    fn cpu_seconds(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|pid| cpu_seconds(pid)).sum()
    }

    /// The relays' resident memory together (kB), as [`Relays::cpu_seconds`].
    fn rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmRSS")
    }

    /// A memory figure of `/proc/PID/status` summed over the relays (kB): `VmRSS`, or its
    /// parts `RssAnon` (heap and stacks) and `RssFile` (mapped files, such as the database
    /// pages SQLite reads through `mmap`).
    fn memory_kib(&self, field: &str) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|pid| status_kib(pid, field)).sum()
    }

    /// [`Relays::memory_kib`] for the three figures.
    fn memory(&self) -> [Option<u64>; 3] {
        ["VmRSS", "RssAnon", "RssFile"].map(|field| self.memory_kib(field))
    }
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// A memory figure (kB) of a process, e.g. `VmRSS`.
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn histogram_json(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": histogram.len(),
        "p50": histogram.value_at_quantile(0.50),
        "p90": histogram.value_at_quantile(0.90),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
        "mean": (histogram.mean() * 10.0).round() / 10.0,
    })
}

/// Errors by kind.
#[derive(Default)]
struct Errors(Mutex<HashMap<String, u64>>);

impl Errors {
    fn record(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(what.into()).or_default() += 1;
    }

    fn json(&self) -> (u64, Value) {
        let errors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (errors.values().sum(), json!(*errors))
    }
}

/// A bench user: keys made before timing starts (they are the client's cost, not the relay's).
struct Identity {
    user: UserId,
    keys: IdentityKeyPair,
    signed_prekey: SignedPrekey,
}

fn identities(prefix: &str, count: usize) -> Vec<Identity> {
    let mut rng = rand::rng();
    (0..count)
        .map(|i| {
            let keys = IdentityKeyPair::generate(&mut rng);
            let signed_prekey = SignedPrekey::generate(&keys, 1, 1_767_225_600, &mut rng);
            let user = UserId::parse(&format!("{prefix}{i}")).unwrap_or_else(|_| unreachable_id());
            Identity { user, keys, signed_prekey }
        })
        .collect()
}

#[allow(clippy::panic)]
fn unreachable_id() -> UserId {
    panic!("bench user ids are valid")
}

type Connection = (RelayClient, mpsc::UnboundedReceiver<Push>);

/// Registers every identity (connect + challenge + register), `concurrency` at a time; identity
/// `i` goes to relay `i mod n`. Returns connections in order and the per-registration durations
/// (µs).
async fn register_all(
    servers: &[String],
    ids: &[Identity],
    concurrency: usize,
    errors: &Errors,
    login: bool,
) -> anyhow::Result<(Vec<Connection>, Histogram<u64>)> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let gate = gate.clone();
        let server = servers[i % servers.len()].clone();
        let user = id.user.clone();
        let keys = id.keys.clone();
        let spk = *id.signed_prekey.public();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let started = Instant::now();
            let (client, pushes) = RelayClient::connect(&server, Duration::from_secs(30)).await?;
            if login {
                client.login(&user, &keys).await?;
            } else if let Err(error) = client.register(&user, &keys, &spk, &[]).await {
                if error.code() == Some("rate_limited") {
                    bail!(
                        "{error}: the relay limits registrations per address; run it with \
                         --registrations-per-hour 0 to bench"
                    );
                }
                return Err(error.into());
            }
            anyhow::Ok(((client, pushes), started.elapsed()))
        }));
    }
    let mut connections = Vec::with_capacity(ids.len());
    let mut took = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for task in tasks {
        match task.await? {
            Ok((connection, elapsed)) => {
                took.saturating_record(elapsed.as_micros() as u64);
                connections.push(connection);
            }
            Err(error) => {
                errors.record(format!("set-up: {error}"));
                bail!("set-up failed: {error}");
            }
        }
    }
    Ok((connections, took))
}

/// What a pair's receiver shares with its sender.
struct PairState {
    /// Send time (µs since start) by sequence number, in a ring.
    sent_at: Vec<AtomicU64>,
    /// Which sequence numbers arrived (a ring of flags).
    received: Vec<AtomicBool>,
    /// In-flight permits (throughput mode).
    window: Semaphore,
    /// The sender's connection closed (the relay ends a connection that stops reading, as an
    /// overloaded bench may): its sender stops, instead of spinning through refused sends.
    sender_closed: AtomicBool,
}

const RING: usize = 1 << 16;

struct Totals {
    sent: AtomicU64,
    sent_in_window: AtomicU64,
    stored: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    /// Messages whose frame arrived inside the measured window, whenever they were sent: the
    /// throughput, counted as the reference's load generator counts it.
    arrived_in_window: AtomicU64,
    duplicates: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    store_latency: Mutex<Histogram<u64>>,
    /// Fixed-rate mode: how late each measured send went out against its schedule. Latency is
    /// timed from the actual send, so a bench that falls behind would hide that wait; this
    /// shows whether it did.
    schedule_lag: Mutex<Histogram<u64>>,
}

/// Reads the `n` of an envelope's header: the bench puts the sequence number there.
fn sequence_of(envelope: &str) -> Option<u32> {
    let at = envelope.find("\"n\":")? + 4;
    let digits: String = envelope[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn envelope(size: usize, sequence: u32, ciphertext: &str, dh: &str) -> String {
    debug_assert!(size.is_power_of_two());
    format!(
        r#"{{"version":1,"suite":1,"header":{{"dh":"{dh}","pn":0,"n":{sequence}}},"ciphertext":"{ciphertext}"}}"#
    )
}

/// Random stand-ins, base64, for a padded plaintext of `size` bytes encrypted (16 bytes more)
/// and for a ratchet public key (65 bytes, uncompressed point): what an envelope carries.
fn random_ciphertext_and_key(size: usize) -> (String, String) {
    let mut ciphertext = vec![0u8; size + 16];
    rand::rng().fill_bytes(&mut ciphertext);
    let mut key = [4u8; 65];
    rand::rng().fill_bytes(&mut key[1..]);
    (b64(&ciphertext), b64(&key))
}

fn progress(enabled: bool, text: &str) {
    if enabled {
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
    }
}

async fn receiver(
    client: RelayClient,
    mut pushes: mpsc::UnboundedReceiver<Push>,
    pair: Arc<PairState>,
    totals: Arc<Totals>,
    start: Instant,
    window: (u64, u64),
    throughput: bool,
) {
    while let Some(push) = pushes.recv().await {
        // The clock stops when the frame was read, not when this task got to it.
        let now = push.arrived.saturating_duration_since(start).as_micros() as u64;
        let Incoming::Messages(messages) = Incoming::from_push(push) else { continue };
        let mut ids = Vec::with_capacity(messages.len());
        for message in &messages {
            ids.push(message.id);
            let Some(sequence) = sequence_of(message.envelope.get()) else { continue };
            let slot = sequence as usize % RING;
            if pair.received[slot].swap(true, Relaxed) {
                totals.duplicates.fetch_add(1, Relaxed);
                continue;
            }
            totals.received.fetch_add(1, Relaxed);
            if now >= window.0 && now < window.1 {
                totals.arrived_in_window.fetch_add(1, Relaxed);
            }
            let sent = pair.sent_at[slot].load(Relaxed);
            if sent >= window.0 && sent < window.1 {
                totals.received_in_window.fetch_add(1, Relaxed);
                if let Ok(mut histogram) = totals.latency.lock() {
                    histogram.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            if throughput {
                pair.window.add_permits(1);
            }
        }
        acknowledge(&client, &ids);
    }
}

/// Acknowledges pushed messages like a real client (after "saving"), without waiting for the
/// answer.
fn acknowledge(client: &RelayClient, ids: &[i64]) {
    let _ = client.socket().emit("message:ack", &json!({ "ids": ids }));
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    client: RelayClient,
    to: String,
    k: usize,
    pairs: usize,
    pair: Arc<PairState>,
    totals: Arc<Totals>,
    errors: Arc<Errors>,
    args: BenchArgs,
    start: Instant,
    window: (u64, u64),
) {
    let (ciphertext, dh) = random_ciphertext_and_key(args.size);
    let period = args.rate.map(|rate| pairs as f64 * 1e6 / rate);
    let mut next =
        period.map(|p| window.0 as f64 - args.warmup * 1e6 + p * (k as f64 / pairs as f64));
    let mut sequence: u32 = 0;
    // Answers awaited, polled by this task (no task per message).
    let mut in_flight = FuturesUnordered::new();
    loop {
        // When this send is due (fixed rate), to see how late it actually goes.
        let scheduled = next.map(|due| due as u64);
        let slot = async {
            if let (Some(period), Some(due)) = (period, next.as_mut()) {
                let at = *due as u64;
                if at >= window.1 {
                    return false;
                }
                tokio::time::sleep_until((start + Duration::from_micros(at)).into()).await;
                *due += period;
                true
            } else {
                // Bounded by the end of the run: refused sends return their slot, but a relay
                // that stops answering must not hang the bench.
                let end = (start + Duration::from_micros(window.1)).into();
                match tokio::time::timeout_at(end, pair.window.acquire()).await {
                    Ok(Ok(permit)) => {
                        permit.forget();
                        true
                    }
                    _ => false,
                }
            }
        };
        tokio::pin!(slot);
        let go_on = loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                go_on = &mut slot => break go_on,
            }
        };
        if !go_on || pair.sender_closed.load(Relaxed) {
            break;
        }
        let now = now_us(start);
        if now >= window.1 {
            break;
        }
        sequence = sequence.wrapping_add(1);
        pair.sent_at[sequence as usize % RING].store(now, Relaxed);
        pair.received[sequence as usize % RING].store(false, Relaxed);
        let body = envelope(args.size, sequence, &ciphertext, &dh);
        let Ok(raw) = serde_json::value::RawValue::from_string(body) else { continue };
        totals.sent.fetch_add(1, Relaxed);
        if now >= window.0 {
            totals.sent_in_window.fetch_add(1, Relaxed);
            if let (Some(due), Ok(mut lag)) = (scheduled, totals.schedule_lag.lock()) {
                lag.saturating_record(now.saturating_sub(due).max(1));
            }
        }
        let client = client.clone();
        let to = to.clone();
        let totals = totals.clone();
        let errors = errors.clone();
        let id = format!("{k}-{sequence}");
        let counted_in_window = now >= window.0;
        let throughput = period.is_none();
        let window_slots = pair.clone();
        in_flight.push(async move {
            let started = Instant::now();
            match client.send_raw(&to, &id, &raw).await {
                Ok(_) => {
                    totals.stored.fetch_add(1, Relaxed);
                    // Like the end-to-end latency: measured sends only, not the warm-up.
                    if counted_in_window && let Ok(mut histogram) = totals.store_latency.lock() {
                        histogram.saturating_record(started.elapsed().as_micros() as u64);
                    }
                }
                Err(error) => {
                    // Refused: it will never arrive, so it is not counted as sent (nor lost),
                    // and its slot in the window is free again.
                    totals.sent.fetch_sub(1, Relaxed);
                    if counted_in_window {
                        totals.sent_in_window.fetch_sub(1, Relaxed);
                    }
                    if throughput {
                        window_slots.window.add_permits(1);
                    }
                    if matches!(error, RelayError::Transport(TransportError::Closed)) {
                        window_slots.sender_closed.store(true, Relaxed);
                    }
                    errors.record(format!("send: {}", error.code().unwrap_or("transport")))
                }
            }
        });
    }
    while in_flight.next().await.is_some() {}
}

async fn run_pairs(servers: &[String], args: BenchArgs) -> anyhow::Result<Value> {
    let errors = Arc::new(Errors::default());
    let show = !args.json && std::io::stderr().is_terminal();
    let relays = Relays::new(&args.server_pid);
    let tag: u32 = rand::random();
    progress(show, "making keys…");
    let ids = identities(&format!("b{tag:08x}u"), args.pairs * 2);

    progress(show, "registering…");
    let setup_started = Instant::now();
    let (registered, register_took) =
        register_all(servers, &ids, args.connect_concurrency, &errors, false).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    for (client, _) in &registered {
        client.close();
    }
    progress(show, "logging in…");
    let login_started = Instant::now();
    let (connections, login_took) =
        register_all(servers, &ids, args.connect_concurrency, &errors, true).await?;
    let login_s = login_started.elapsed().as_secs_f64();

    let start = Instant::now();
    let warmup_until = now_us(start) + (args.warmup * 1e6) as u64 + 200_000;
    let window = (warmup_until, warmup_until + (args.duration * 1e6) as u64);
    let totals = Arc::new(Totals {
        sent: AtomicU64::new(0),
        sent_in_window: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        received: AtomicU64::new(0),
        received_in_window: AtomicU64::new(0),
        arrived_in_window: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        store_latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        schedule_lag: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let throughput = args.rate.is_none();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut receiving_clients = Vec::new();
    let mut connections = connections.into_iter();
    for k in 0..args.pairs {
        let (Some((send_client, _)), Some((receive_client, pushes))) =
            (connections.next(), connections.next())
        else {
            break;
        };
        let pair = Arc::new(PairState {
            sent_at: (0..RING).map(|_| AtomicU64::new(0)).collect(),
            received: (0..RING).map(|_| AtomicBool::new(false)).collect(),
            window: Semaphore::new(if throughput { args.window } else { 0 }),
            sender_closed: AtomicBool::new(false),
        });
        receiving_clients.push(receive_client.clone());
        receivers.push(tokio::spawn(receiver(
            receive_client.clone(),
            pushes,
            pair.clone(),
            totals.clone(),
            start,
            window,
            throughput,
        )));
        senders.push(tokio::spawn(sender(
            send_client,
            ids[2 * k + 1].user.to_string(),
            k,
            args.pairs,
            pair,
            totals.clone(),
            errors.clone(),
            args.clone(),
            start,
            window,
        )));
    }

    // Measure the window.
    let bench_pid = std::process::id().to_string();
    tokio::time::sleep_until((start + Duration::from_micros(window.0)).into()).await;
    let server_cpu_before = relays.cpu_seconds();
    let bench_cpu_before = cpu_seconds(&bench_pid);
    let received_before = totals.received.load(Relaxed);
    let measure_started = Instant::now();
    // Ends when the senders stop, not after whole progress steps past it (which counted time
    // with nothing sent into the rate).
    let window_end = start + Duration::from_micros(window.1);
    while Instant::now() < window_end {
        let step = (Instant::now() + Duration::from_millis(500)).min(window_end);
        tokio::time::sleep_until(step.into()).await;
        let elapsed = measure_started.elapsed().as_secs_f64().max(0.001);
        let delivered = totals.received.load(Relaxed) - received_before;
        progress(
            show,
            &format!(
                "measuring {:>4.1}/{:.0} s   {:>9.0} delivered/s   sent {}",
                elapsed,
                args.duration,
                delivered as f64 / elapsed,
                totals.sent.load(Relaxed)
            ),
        );
    }
    let measured = measure_started.elapsed().as_secs_f64();
    let delivered_in_window = totals.received.load(Relaxed) - received_before;
    let server_cpu = relays.cpu_seconds().zip(server_cpu_before).map(|(b, a)| b - a);
    let bench_cpu = cpu_seconds(&bench_pid).zip(bench_cpu_before).map(|(b, a)| b - a);

    // Stop sending; let what is in flight arrive.
    for task in senders {
        let _ = task.await;
    }
    progress(show, "draining…");
    let drain_started = Instant::now();
    while totals.received.load(Relaxed) < totals.sent.load(Relaxed)
        && drain_started.elapsed().as_secs_f64() < args.drain
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in receivers {
        task.abort();
    }
    // The last acknowledgements were emitted without waiting; one answered request behind
    // them on each socket means the relay has read them before the bench exits.
    let status = json!({ "ids": [0] });
    let behind_the_acks =
        receiving_clients.iter().map(|client| client.call::<_, Value>("message:status", &status));
    futures_util::future::join_all(behind_the_acks).await;
    progress(show, "");

    let rss = relays.rss_kib();
    let sent = totals.sent.load(Relaxed);
    let received = totals.received.load(Relaxed);
    let (error_count, error_kinds) = errors.json();
    // Throughput by arrival time inside the window, over the window's exact length; CPU per
    // message by what arrived between the two CPU readings.
    let window_s = (window.1 - window.0) as f64 / 1e6;
    let per_second = totals.arrived_in_window.load(Relaxed) as f64 / window_s;
    let cpu_us_per_message = server_cpu.map(|cpu| cpu * 1e6 / delivered_in_window.max(1) as f64);
    let bench_cpu_share = bench_cpu.map(|cpu| cpu / measured);
    let latency = totals.latency.lock().map(|h| histogram_json(&h)).unwrap_or(Value::Null);
    let store = totals.store_latency.lock().map(|h| histogram_json(&h)).unwrap_or(Value::Null);
    let lag = match totals.schedule_lag.lock() {
        Ok(histogram) if !throughput => histogram_json(&histogram),
        _ => Value::Null,
    };
    Ok(json!({
        "label": args.label,
        "mode": if throughput { "throughput" } else { "rate" },
        "pairs": args.pairs,
        "relays": servers.len(),
        "size": args.size,
        "window": if throughput { json!(args.window) } else { Value::Null },
        "rate": args.rate,
        "duration_s": window_s,
        "delivered_msgs_per_s": per_second.round(),
        "total_sent": sent,
        "total_received": received,
        "sent_in_window": totals.sent_in_window.load(Relaxed),
        "stored_acks": totals.stored.load(Relaxed),
        "lost": sent.saturating_sub(received),
        "duplicates": totals.duplicates.load(Relaxed),
        "latency_us": latency,
        "store_ack_latency_us": store,
        "schedule_lag_us": lag,
        "setup_s": setup_s,
        "registration_us": histogram_json(&register_took),
        "authentication_s": login_s,
        "authentication_us": histogram_json(&login_took),
        "errors": error_count,
        "error_kinds": error_kinds,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_msg": cpu_us_per_message.map(|v| (v * 100.0).round() / 100.0),
        "server_rss_kb": rss,
        "bench_cpu_s": bench_cpu,
        "bench_cpu_share": bench_cpu_share.map(|v| (v * 1000.0).round() / 1000.0),
        "bench_limited": bench_cpu_share.is_some_and(|share| share > 0.9),
    }))
}

/// Backlog messages sent at once: enough to keep the relay's writer busy, few enough that none
/// waits long enough to be refused `busy`.
const BACKLOG_IN_FLIGHT: usize = 512;

/// Has user `i` send `args.backlog` messages to user `i + 1`, at most `BACKLOG_IN_FLIGHT` in
/// flight, spread over the users (one sender's burst would meet its pair limit); a retryable
/// refusal is retried after the wait it names, others are counted as errors. Returns how many
/// messages were queued for each user.
async fn queue_backlogs(
    registered: &[Connection],
    ids: &[Identity],
    args: &BenchArgs,
    errors: &Errors,
) -> Vec<usize> {
    let (ciphertext, dh) = random_ciphertext_and_key(args.size);
    let (ciphertext, dh) = (ciphertext.as_str(), dh.as_str());
    let sends = (0..args.backlog).flat_map(|n| {
        registered.iter().enumerate().map(move |(i, (client, _))| {
            let recipient = (i + 1) % ids.len();
            let to = ids[recipient].user.to_string();
            let body = envelope(args.size, n as u32, ciphertext, dh);
            async move {
                let raw = serde_json::value::RawValue::from_string(body)?;
                let mut attempts = 0;
                loop {
                    match client.send_raw(&to, &format!("b{i}-{n}"), &raw).await {
                        Ok(_) => return anyhow::Ok(recipient),
                        Err(RelayError::Refused(refusal)) if refusal.retryable && attempts < 20 => {
                            attempts += 1;
                            let wait = refusal.retry_after_ms.unwrap_or(20);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        })
    });
    let mut queued = vec![0; ids.len()];
    let mut sends = futures_util::stream::iter(sends).buffer_unordered(BACKLOG_IN_FLIGHT);
    while let Some(result) = sends.next().await {
        match result {
            Ok(recipient) => queued[recipient] += 1,
            Err(error) => errors.record(format!("backlog: {error}")),
        }
    }
    queued
}

/// Reads each connection's pushes until its backlog has arrived (a minute at most for all),
/// acknowledging each push like a real client (the relay paces a catch-up by them); returns
/// how many messages arrived.
async fn await_backlogs(connections: &mut [Connection], queued: &[usize]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let each = connections.iter_mut().zip(queued).map(|((client, pushes), &backlog)| async move {
        let mut arrived = 0;
        while arrived < backlog {
            match tokio::time::timeout_at(deadline, pushes.recv()).await {
                Ok(Some(push)) => {
                    if let Incoming::Messages(messages) = Incoming::from_push(push) {
                        arrived += messages.len();
                        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
                        acknowledge(client, &ids);
                    }
                }
                _ => break,
            }
        }
        arrived
    });
    futures_util::future::join_all(each).await.into_iter().sum()
}

async fn run_idle(servers: &[String], args: BenchArgs, count: usize) -> anyhow::Result<Value> {
    let errors = Errors::default();
    let show = !args.json && std::io::stderr().is_terminal();
    let relays = Relays::new(&args.server_pid);
    let before = relays.memory();
    let started = Instant::now();
    // Each connection, owned by a check of whether it is still open.
    let mut held: Vec<Box<dyn Fn() -> bool + Send>> = Vec::with_capacity(count);
    let mut register_took = None;
    let mut login_took = None;
    let setup_s;
    let mut login_s = 0.0;
    let mut backlog_delivered = None;
    let mut backlog_s = None;
    // Messages queued for each user before it logs in.
    let mut queued = Vec::new();
    if args.anonymous {
        let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let gate = gate.clone();
            let server = servers[i % servers.len()].clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                sotto_client::socketio::SocketIoClient::connect(&server, Duration::from_secs(30))
                    .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await? {
                Ok(connection) => held.push(Box::new(move || {
                    let (socket, _events) = &connection;
                    socket.is_open()
                })),
                Err(error) => errors.record(format!("connect: {error}")),
            }
            if i % 500 == 0 {
                progress(show, &format!("connected {i}/{count}"));
            }
        }
        setup_s = started.elapsed().as_secs_f64();
    } else {
        progress(show, "making keys…");
        let tag: u32 = rand::random();
        let ids = identities(&format!("i{tag:08x}u"), count);
        progress(show, &format!("registering {count}…"));
        let registering = Instant::now();
        let (registered, took) =
            register_all(servers, &ids, args.connect_concurrency, &errors, false).await?;
        setup_s = registering.elapsed().as_secs_f64();
        register_took = Some(took);
        if args.backlog > 0 {
            progress(show, &format!("queueing {} messages for each user…", args.backlog));
            queued = queue_backlogs(&registered, &ids, &args, &errors).await;
        }
        for (client, _) in &registered {
            client.close();
        }
        drop(registered);
        tokio::time::sleep(Duration::from_secs(2)).await;
        progress(show, &format!("logging {count} in…"));
        let logging_in = Instant::now();
        let (connections, took) =
            register_all(servers, &ids, args.connect_concurrency, &errors, true).await?;
        login_s = logging_in.elapsed().as_secs_f64();
        login_took = Some(took);
        let mut connections = connections;
        if args.backlog > 0 {
            progress(show, "waiting for the backlogs…");
            let waiting = Instant::now();
            backlog_delivered = Some(await_backlogs(&mut connections, &queued).await);
            backlog_s = Some(waiting.elapsed().as_secs_f64());
        }
        for connection in connections {
            // The closure owns the whole connection, the pushes' receiver included.
            held.push(Box::new(move || {
                let (client, _pushes) = &connection;
                client.is_open()
            }));
        }
    }
    progress(show, "settling…");
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = relays.memory();
    // Held means still open after the settling time, not only opened once.
    let still_open = held.iter().filter(|is_open| is_open()).count();
    for _ in still_open..held.len() {
        errors.record("closed while idle");
    }
    progress(show, "");
    // Growth per connection, in bytes, of each memory figure.
    let [per_connection, anonymous_per_connection, file_per_connection] = [0, 1, 2].map(|figure| {
        before[figure]
            .zip(after[figure])
            .map(|(b, a)| (a.saturating_sub(b) as f64 * 1024.0 / still_open.max(1) as f64).round())
    });
    let (error_count, error_kinds) = errors.json();
    Ok(json!({
        "label": args.label,
        "mode": if args.anonymous { "idle-anonymous" } else { "idle-authenticated" },
        "connections": held.len(),
        "backlog": args.backlog,
        "backlog_delivered": backlog_delivered,
        "backlog_s": backlog_s,
        "still_open": still_open,
        "relays": servers.len(),
        "server_rss_kb_before": before[0],
        "server_rss_kb_after": after[0],
        "bytes_per_connection": per_connection,
        "anonymous_bytes_per_connection": anonymous_per_connection,
        "file_bytes_per_connection": file_per_connection,
        "setup_s": setup_s,
        "authentication_s": login_s,
        "registration_us": register_took.as_ref().map(histogram_json),
        "authentication_us": login_took.as_ref().map(histogram_json),
        "errors": error_count,
        "error_kinds": error_kinds,
    }))
}

fn table(result: &Value) -> String {
    let mut out = String::new();
    let mut row = |name: &str, value: String| {
        out.push_str(&format!("  {name:<34} {value}\n"));
    };
    let get = |key: &str| result.get(key).cloned().unwrap_or(Value::Null);
    let show = |value: Value| match value {
        Value::Null => "—".to_owned(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    row("mode", show(get("mode")));
    for (key, name) in [
        ("pairs", "pairs"),
        ("relays", "relays"),
        ("connections", "connections"),
        ("backlog", "backlog pushed to each first"),
        ("backlog_delivered", "… messages of it that arrived"),
        ("backlog_s", "… seconds from the last login to the last of it"),
        ("size", "plaintext bucket (bytes)"),
        ("window", "window per pair"),
        ("rate", "fixed rate (msgs/s)"),
        ("delivered_msgs_per_s", "delivered msgs/s"),
        ("total_sent", "sent"),
        ("total_received", "received"),
        ("lost", "lost"),
        ("duplicates", "duplicates"),
        ("errors", "errors"),
        ("server_cpu_us_per_msg", "server CPU µs per message"),
        ("server_rss_kb", "server RSS (kB)"),
        ("bytes_per_connection", "server bytes per connection"),
        ("anonymous_bytes_per_connection", "… of it heap and stacks (RssAnon)"),
        ("file_bytes_per_connection", "… of it mapped files (RssFile)"),
        ("setup_s", "set-up (s)"),
        ("authentication_s", "log-in of all clients (s)"),
        ("bench_cpu_share", "bench CPU share (1 = one core)"),
        ("bench_limited", "bench is the limit"),
    ] {
        if result.get(key).is_some_and(|v| !v.is_null()) {
            row(name, show(get(key)));
        }
    }
    if let Some(latency) = result.get("latency_us").filter(|l| l.get("p50").is_some()) {
        row(
            "latency µs p50 / p90 / p99 / max",
            format!(
                "{} / {} / {} / {}",
                show(latency["p50"].clone()),
                show(latency["p90"].clone()),
                show(latency["p99"].clone()),
                show(latency["max"].clone())
            ),
        );
    }
    if let Some(lag) = result.get("schedule_lag_us").filter(|l| l.get("p50").is_some()) {
        row(
            "sends late on schedule µs p50 / p99",
            format!("{} / {}", show(lag["p50"].clone()), show(lag["p99"].clone())),
        );
    }
    out
}

/// Runs the bench against `server` (and the `--also-server` relays).
pub fn run(server: &str, args: BenchArgs) -> anyhow::Result<()> {
    if !args.size.is_power_of_two() || !(64..=32 * 1024).contains(&args.size) {
        bail!("--size must be a power of two from 64 to 32768 (a plaintext bucket)");
    }
    // One thread: pinned to its own core (taskset), the bench then costs the least per
    // message and measures the relay, not the bench's scheduling.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the bench runtime")?;
    let json = args.json;
    let servers: Vec<String> =
        std::iter::once(server.to_owned()).chain(args.also_servers.iter().cloned()).collect();
    let result = runtime.block_on(async {
        match args.idle {
            Some(count) => run_idle(&servers, args, count).await,
            None => run_pairs(&servers, args).await,
        }
    })?;
    if json {
        println!("{result}");
    } else {
        print!("{}", table(&result));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_number_is_read_back_from_the_header() {
        let text = envelope(256, 4242, "AAAA", "BBBB");
        assert_eq!(sequence_of(&text), Some(4242));
        assert_eq!(sequence_of("{}"), None);
    }
}
