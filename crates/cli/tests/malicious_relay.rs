//! The Rust client against a lying relay. A man-in-the-middle proxy sits between one client and
//! a real relay (in this process, real SQLite, real sockets) and rewrites what the relay says:
//! it substitutes identity keys and whole bundles, replays an old bundle, flips bits in
//! ciphertext, replays old ciphertext, and drops, duplicates, reorders and delays envelopes.
//! Each test checks what the user is shown and that nothing was stored that should not be.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sotto_client::client::{Client, Event, Trusted};
use sotto_client::relay::{ReceivedMessage, RelayClient};
use sotto_client::socketio::Push;
use sotto_protocol::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use sotto_protocol::record::MessageDigest;
use sotto_protocol::session::{LocalParty, Session};
use sotto_protocol::wire::{PublicIdentityJson, b64, from_b64};
use sotto_protocol::{IdentityKeyPair, Record, UserId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

// ---- the lying relay ---------------------------------------------------------------------------

/// What the proxy does to the relay's words on their way to the client.
trait Attack: Send {
    /// Rewrites the relay's answer to a request the client made with `event`.
    fn answer(&mut self, _event: &str, _answer: &mut Value) {}
    /// Turns one received message (`{id, from, receivedAt, envelope}`) into what the client
    /// gets instead: nothing, itself, a changed copy, or several.
    fn message(&mut self, message: Value) -> Vec<Value> {
        vec![message]
    }
    /// Whether another push (`message:delivered`, presence) reaches the client.
    fn push(&mut self, _event: &str) -> bool {
        true
    }
}

/// Passes everything through unchanged.
struct Honest;
impl Attack for Honest {}

type SharedAttack = Arc<Mutex<Box<dyn Attack>>>;

/// A relay in this process with a proxy in front of it.
struct LyingRelay {
    /// The relay itself (for clients the attacker does not sit in front of).
    direct: String,
    /// The proxy.
    proxied: String,
    attack: SharedAttack,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl LyingRelay {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = listener.local_addr().unwrap();
        let database = format!("sqlite:{}", dir.path().join("relay.db").display());
        let mut config = sotto_server::Config::new(relay_addr, database);
        // Clients behind the proxy bind their login signatures to the proxy's address.
        config.public_hosts.push(proxy_addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            sotto_server::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let attack: SharedAttack = Arc::new(Mutex::new(Box::new(Honest)));
        let upstream = format!("ws://{relay_addr}/socket.io/?EIO=4&transport=websocket");
        tokio::spawn(run_proxy(proxy, upstream, attack.clone()));
        let relay = Self {
            direct: format!("http://{relay_addr}"),
            proxied: format!("http://{proxy_addr}"),
            attack,
            stop: Some(stop),
            _dir: dir,
        };
        for _ in 0..200 {
            if TcpStream::connect(relay_addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        relay
    }

    fn attack(&self, attack: impl Attack + 'static) {
        *self.attack.lock().unwrap() = Box::new(attack);
    }
}

impl Drop for LyingRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn run_proxy(listener: TcpListener, upstream: String, attack: SharedAttack) {
    while let Ok((stream, _)) = listener.accept().await {
        let upstream = upstream.clone();
        let attack = attack.clone();
        tokio::spawn(async move {
            let Ok(client) = tokio_tungstenite::accept_async(stream).await else { return };
            let Ok((server, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await else {
                return;
            };
            let (mut to_client, mut from_client) = client.split();
            let (mut to_server, mut from_server) = server.split();
            // Which event each request id asked for, so answers can be told apart.
            let requests: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
            let seen = requests.clone();
            let upward = async move {
                while let Some(Ok(message)) = from_client.next().await {
                    if let Message::Text(text) = &message
                        && let Some((id, event)) = parse_request(text.as_str())
                    {
                        seen.lock().unwrap().insert(id, event);
                    }
                    let close = matches!(message, Message::Close(_));
                    if to_server.send(message).await.is_err() || close {
                        break;
                    }
                }
                let _ = to_server.close().await;
            };
            let downward = async move {
                while let Some(Ok(message)) = from_server.next().await {
                    let frames = match &message {
                        Message::Text(text) => rewrite(text.as_str(), &requests, &attack),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    for frame in frames {
                        if to_client.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = to_client.close().await;
            };
            // Either side closing ends the connection, as a real relay going away would.
            tokio::select! {
                () = upward => {}
                () = downward => {}
            }
        });
    }
}

/// `42<id>["event", …]` from the client: a request awaiting an answer.
fn parse_request(packet: &str) -> Option<(u64, String)> {
    let rest = packet.strip_prefix("42")?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let id = rest[..digits].parse().ok()?;
    let body: Value = serde_json::from_str(&rest[digits..]).ok()?;
    Some((id, body.get(0)?.as_str()?.to_owned()))
}

/// Applies the attack to one packet from the relay.
fn rewrite(
    packet: &str,
    requests: &Mutex<HashMap<u64, String>>,
    attack: &Mutex<Box<dyn Attack>>,
) -> Vec<String> {
    // An answer: 43<id>[answer].
    if let Some(rest) = packet.strip_prefix("43") {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if let (Ok(id), Ok(Value::Array(mut args))) =
            (rest[..digits].parse::<u64>(), serde_json::from_str::<Value>(&rest[digits..]))
        {
            let event = requests.lock().unwrap().remove(&id).unwrap_or_default();
            if let Some(answer) = args.first_mut() {
                attack.lock().unwrap().answer(&event, answer);
            }
            return vec![format!("43{id}{}", Value::Array(args))];
        }
    }
    // A push of messages: each message goes through the attack on its own.
    if let Some(rest) = packet.strip_prefix("42")
        && let Ok(Value::Array(args)) = serde_json::from_str::<Value>(rest)
        && args.first().and_then(Value::as_str) == Some("message:receive")
    {
        let messages = args.get(1).and_then(|d| d.get("messages")).and_then(Value::as_array);
        let mut frames = Vec::new();
        for message in messages.cloned().unwrap_or_default() {
            for changed in attack.lock().unwrap().message(message) {
                frames.push(format!("42{}", json!(["message:receive", { "messages": [changed] }])));
            }
        }
        return frames;
    }
    if let Some(rest) = packet.strip_prefix("42")
        && let Ok(Value::Array(args)) = serde_json::from_str::<Value>(rest)
        && let Some(event) = args.first().and_then(Value::as_str)
        && !attack.lock().unwrap().push(event)
    {
        return Vec::new();
    }
    vec![packet.to_owned()]
}

// ---- attacks -----------------------------------------------------------------------------------

/// Answers every identity lookup and bundle request for `victim` with `identity`. With
/// `whole_bundle`, bundles are the attacker's own, validly signed by the attacker's key; without
/// it, only the identity inside the real bundle is swapped.
struct SubstituteIdentity {
    victim: String,
    identity: Value,
    bundle: Option<Value>,
}

impl Attack for SubstituteIdentity {
    fn answer(&mut self, event: &str, answer: &mut Value) {
        if answer.get("userId").and_then(Value::as_str) != Some(self.victim.as_str()) {
            return;
        }
        match event {
            "user:identity" => answer["identity"] = self.identity.clone(),
            "user:request-key" => match &self.bundle {
                Some(bundle) => answer["bundle"] = bundle.clone(),
                None => answer["bundle"]["identity"] = self.identity.clone(),
            },
            _ => {}
        }
    }
}

/// Remembers the first bundle handed out and hands it out again to everyone after.
#[derive(Default)]
struct ReplayFirstBundle {
    first: Option<Value>,
}

impl Attack for ReplayFirstBundle {
    fn answer(&mut self, event: &str, answer: &mut Value) {
        if event == "user:request-key" {
            match &self.first {
                None => self.first = Some(answer["bundle"].clone()),
                Some(first) => answer["bundle"] = first.clone(),
            }
        }
    }
}

/// Stores what the client sends but tells it the relay is busy, so the client keeps the
/// message queued (sealed) to send again.
struct BusyOnSend;

impl Attack for BusyOnSend {
    fn answer(&mut self, event: &str, answer: &mut Value) {
        if event == "message:send" {
            *answer = json!({
                "ok": false,
                "error": "busy",
                "message": "the relay is busy; try again shortly",
                "retryable": true,
            });
        }
    }
}

/// Keeps the sender from learning that its messages were delivered: no receipts, and "pending"
/// whenever it asks.
struct HideDelivery;

impl Attack for HideDelivery {
    fn answer(&mut self, event: &str, answer: &mut Value) {
        if event == "message:status"
            && let Some(statuses) = answer.get_mut("statuses").and_then(Value::as_array_mut)
        {
            for status in statuses {
                status["status"] = json!("pending");
            }
        }
    }

    fn push(&mut self, event: &str) -> bool {
        event != "message:delivered"
    }
}

/// Does `action` to the messages numbered (from 1) in `which`.
struct PerMessage<F: FnMut(usize, Value) -> Vec<Value> + Send> {
    count: usize,
    action: F,
}

impl<F: FnMut(usize, Value) -> Vec<Value> + Send> Attack for PerMessage<F> {
    fn message(&mut self, message: Value) -> Vec<Value> {
        self.count += 1;
        (self.action)(self.count, message)
    }
}

fn per_message(action: impl FnMut(usize, Value) -> Vec<Value> + Send + 'static) -> impl Attack {
    PerMessage { count: 0, action }
}

/// Flips one bit in the middle of an envelope's ciphertext.
fn flip_bit(mut message: Value) -> Value {
    let text = message["envelope"]["ciphertext"].as_str().unwrap();
    let mut bytes = from_b64("ciphertext", text).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    message["envelope"]["ciphertext"] = Value::String(b64(&bytes));
    message
}

// ---- clients ---------------------------------------------------------------------------------

/// A client with its connection and pushes, as `sotto chat` holds them.
struct Person {
    client: Client,
    relay: RelayClient,
    pushes: mpsc::UnboundedReceiver<Push>,
    server: String,
}

impl Person {
    async fn register(home: &Path, server: &str, user: &str) -> Self {
        let user = UserId::parse(user).unwrap();
        let (client, relay, pushes) = Client::register(home, server, &user).await.unwrap();
        let mut person = Self { client, relay, pushes, server: server.to_owned() };
        // Registration is not a login: log in as `sotto chat` does.
        person.reconnect().await;
        person
    }

    async fn reconnect(&mut self) {
        self.relay.close();
        let (relay, pushes, _) = self.client.connect(&self.server).await.unwrap();
        self.relay = relay;
        self.pushes = pushes;
    }

    async fn send(&self, to: &str, text: &str) -> Vec<Event> {
        self.client.compose(&UserId::parse(to).unwrap(), text).await.unwrap();
        self.client.flush_outbox(&self.relay).await.unwrap()
    }

    /// Handles pushes until `done` says so, then until nothing more arrives for a moment.
    async fn receive_until(&mut self, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let wait = if done(&events) {
                QUIET
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            match tokio::time::timeout(wait, self.pushes.recv()).await {
                Ok(Some(push)) => {
                    events.extend(self.client.handle(&self.relay, push).await.unwrap())
                }
                Ok(None) => panic!("the connection closed"),
                Err(_) if done(&events) => return events,
                Err(_) => panic!("timed out; events so far: {events:?}"),
            }
        }
    }

    async fn received_texts(&self, peer: &str) -> Vec<String> {
        let history = self.client.store().history(peer, 100).await.unwrap();
        history.iter().filter(|m| !m.outgoing).filter_map(|m| m.body.clone()).collect()
    }

    async fn session_bytes(&self, peer: &str) -> Vec<u8> {
        self.client.store().session(peer).await.unwrap().to_bytes().to_vec()
    }
}

/// An attacker's complete, validly self-signed bundle claiming to be `user`'s.
fn attacker_bundle(user: &str) -> (Value, Value) {
    let mut rng = rand::rng();
    let mallory = IdentityKeyPair::generate(&mut rng);
    let signed = SignedPrekey::generate(&mallory, 7, 1_700_000_000, &mut rng);
    let one_time = OneTimePrekey::generate(8, &mut rng);
    let bundle = PrekeyBundle::new(
        UserId::parse(user).unwrap(),
        *mallory.public(),
        *signed.public(),
        Some(one_time.public()),
    )
    .unwrap();
    let identity = serde_json::to_value(PublicIdentityJson::from(mallory.public())).unwrap();
    (identity, serde_json::from_str(&bundle.to_json()).unwrap())
}

fn received(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Received(_))).count()
}

fn has(events: &[Event], wanted: impl Fn(&Event) -> bool) -> bool {
    events.iter().any(wanted)
}

/// Alice (direct) and Bob (behind the proxy), with one honest message from Alice to Bob so a
/// session exists.
async fn alice_to_proxied_bob(relay: &LyingRelay, dir: &Path) -> (Person, Person) {
    let alice = Person::register(&dir.join("alice"), &relay.direct, "alice").await;
    let mut bob = Person::register(&dir.join("bob"), &relay.proxied, "bob").await;
    alice.send("bob", "hello bob").await;
    let events = bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(received(&events), 1, "{events:?}");
    (alice, bob)
}

/// Alice (behind the proxy) and Bob (direct), after one honest message from Alice to Bob: Alice
/// has learned Bob's real identity.
async fn proxied_alice_to_bob(relay: &LyingRelay, dir: &Path) -> (Person, Person) {
    let mut bob = Person::register(&dir.join("bob"), &relay.direct, "bob").await;
    let alice = Person::register(&dir.join("alice"), &relay.proxied, "alice").await;
    alice.send("bob", "first").await;
    let events = bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(received(&events), 1, "{events:?}");
    (alice, bob)
}

// ---- key substitution ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_identity_blocks_sending_and_changes_the_safety_number() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = proxied_alice_to_bob(&relay, dir.path()).await;
    let bob_id = UserId::parse("bob").unwrap();
    let (honest_number, changed) = alice.client.safety_number(&bob_id).await.unwrap();
    assert!(!changed);
    let alice_id = UserId::parse("alice").unwrap();
    let (bobs_view, _) = bob.client.safety_number(&alice_id).await.unwrap();
    assert_eq!(honest_number.digits(), bobs_view.digits(), "both ends agree while honest");

    // The relay now claims Bob has another identity key (its own).
    let (identity, _) = attacker_bundle("bob");
    relay.attack(SubstituteIdentity { victim: "bob".into(), identity, bundle: None });
    alice.reconnect().await;
    alice.client.compose(&bob_id, "second").await.unwrap();
    let events = alice.client.flush_outbox(&alice.relay).await.unwrap();
    assert!(
        has(&events, |e| matches!(e, Event::KeyChanged { peer } if peer == "bob")),
        "{events:?}"
    );
    assert_eq!(alice.client.store().outbox().await.unwrap().len(), 1, "held, not sent");

    // Sending stays blocked, and the safety number shown is the new one.
    let blocked = alice.client.compose(&bob_id, "third").await;
    assert!(blocked.is_err(), "composing to a changed identity must be refused");
    let (number, changed) = alice.client.safety_number(&bob_id).await.unwrap();
    assert!(changed);
    assert_ne!(number.digits(), honest_number.digits());
    assert!(!alice.client.verify(&bob_id).await.unwrap(), "a changed key cannot be verified");

    // Nothing reached Bob.
    let events = bob.receive_until(|_| true).await;
    assert_eq!(received(&events), 0, "{events:?}");
    assert_eq!(bob.received_texts("alice").await, ["first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sealed_before_a_key_change_waits_for_trust_and_is_sealed_afresh() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, _bob) = proxied_alice_to_bob(&relay, dir.path()).await;
    let bob_id = UserId::parse("bob").unwrap();

    // "second" is sealed for Bob's real identity, but the relay claims to be busy: it stays
    // queued with its envelope.
    relay.attack(BusyOnSend);
    alice.client.compose(&bob_id, "second").await.unwrap();
    assert!(alice.client.flush_outbox(&alice.relay).await.is_err(), "busy is retried later");
    let queued = alice.client.store().outbox().await.unwrap();
    assert_eq!(queued.len(), 1);
    let sealed = queued[0].envelope.clone().expect("sealed before the refusal");

    // Then Bob's identity changes under Alice's feet. The sealed entry must not go out on its
    // own: the change is shown and the entry held, untouched.
    let (identity, bundle) = attacker_bundle("bob");
    relay.attack(SubstituteIdentity { victim: "bob".into(), identity, bundle: Some(bundle) });
    alice.reconnect().await;
    let events = alice.client.flush_outbox(&alice.relay).await.unwrap();
    assert!(
        has(&events, |e| matches!(e, Event::KeyChanged { peer } if peer == "bob")),
        "{events:?}"
    );
    assert!(!has(&events, |e| matches!(e, Event::Stored { .. })), "{events:?}");
    let held = alice.client.store().outbox().await.unwrap();
    assert_eq!(held.len(), 1, "held, not sent");
    assert_eq!(held[0].envelope.as_deref(), Some(sealed.as_str()));

    // Once the user accepts the new identity, the entry is sealed again, for that identity,
    // and sent.
    // Accepting names the number the user compared: another one is refused, changing nothing.
    let (shown, changed) = alice.client.safety_number(&bob_id).await.unwrap();
    assert!(changed);
    let other: String = shown.digits().chars().rev().collect();
    assert_eq!(alice.client.trust(&bob_id, Some(&other)).await.unwrap(), Trusted::OtherNumber);
    assert_eq!(
        alice.client.store().outbox().await.unwrap()[0].envelope.as_deref(),
        Some(sealed.as_str())
    );
    assert!(alice.client.safety_number(&bob_id).await.unwrap().1, "still pending");
    assert_eq!(
        alice.client.trust(&bob_id, Some(&shown.grouped())).await.unwrap(),
        Trusted::Accepted(shown)
    );
    assert_eq!(alice.client.store().outbox().await.unwrap()[0].envelope, None);
    let events = alice.client.flush_outbox(&alice.relay).await.unwrap();
    assert!(has(&events, |e| matches!(e, Event::Stored { .. })), "{events:?}");
    assert!(alice.client.store().outbox().await.unwrap().is_empty());
    let (_, changed) = alice.client.safety_number(&bob_id).await.unwrap();
    assert!(!changed, "the accepted identity is the current one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_bundle_for_a_new_contact_shows_in_the_safety_number() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Person::register(&dir.path().join("bob"), &relay.direct, "bob").await;
    let carol = Person::register(&dir.path().join("carol"), &relay.proxied, "carol").await;
    let (identity, bundle) = attacker_bundle("bob");
    relay.attack(SubstituteIdentity { victim: "bob".into(), identity, bundle: Some(bundle) });

    // A first contact has nothing to compare with: Carol encrypts to the attacker's key...
    let events = carol.send("bob", "for bob only").await;
    assert!(has(&events, |e| matches!(e, Event::Stored { .. })), "{events:?}");
    // ...which Bob cannot read: he is shown an undecryptable message, not its text.
    let events = bob.receive_until(|e| !e.is_empty()).await;
    assert!(has(&events, |e| matches!(e, Event::Undecryptable { peer } if peer == "carol")));
    assert!(bob.received_texts("carol").await.is_empty());

    // Comparing safety numbers exposes it: Carol's differs from Bob's.
    let carol_id = UserId::parse("carol").unwrap();
    let bob_id = UserId::parse("bob").unwrap();
    bob.client.learn_identity(&bob.relay, &carol_id).await.unwrap();
    let (carols_view, _) = carol.client.safety_number(&bob_id).await.unwrap();
    let (bobs_view, _) = bob.client.safety_number(&carol_id).await.unwrap();
    assert_ne!(carols_view.digits(), bobs_view.digits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_a_swapped_identity_is_refused() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Person::register(&dir.path().join("bob"), &relay.direct, "bob").await;
    let carol = Person::register(&dir.path().join("carol"), &relay.proxied, "carol").await;
    // The real signed prekey under the attacker's identity: the signature no longer verifies.
    let (identity, _) = attacker_bundle("bob");
    relay.attack(SubstituteIdentity { victim: "bob".into(), identity, bundle: None });
    let events = carol.send("bob", "hello").await;
    assert!(
        has(
            &events,
            |e| matches!(e, Event::Failed { reason, .. } if reason.contains("invalid bundle"))
        ),
        "{events:?}"
    );
    assert!(carol.client.store().session("bob").await.unwrap().current().is_none());
    let events = bob.receive_until(|_| true).await;
    assert_eq!(received(&events), 0, "nothing was sent: {events:?}");
    assert!(!has(&events, |e| matches!(e, Event::Undecryptable { .. })), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_bundle_yields_no_session_and_harms_none() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Person::register(&dir.path().join("bob"), &relay.direct, "bob").await;
    let carol = Person::register(&dir.path().join("carol"), &relay.proxied, "carol").await;
    let dave = Person::register(&dir.path().join("dave"), &relay.proxied, "dave").await;
    relay.attack(ReplayFirstBundle::default());

    carol.send("bob", "from carol").await;
    let events = bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(received(&events), 1);
    // Dave gets the bundle Carol got, with the one-time prekey Carol's message used up.
    dave.send("bob", "from dave").await;
    let events = bob.receive_until(|e| !e.is_empty()).await;
    assert!(has(&events, |e| matches!(e, Event::Undecryptable { peer } if peer == "dave")));
    assert!(bob.received_texts("dave").await.is_empty());
    // Bob's conversation with Carol is unharmed.
    relay.attack(Honest);
    carol.send("bob", "still here").await;
    bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(bob.received_texts("carol").await, ["from carol", "still here"]);
}

// ---- tampering and replays -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_is_rejected_and_leaves_the_session_untouched() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut bob) = alice_to_proxied_bob(&relay, dir.path()).await;
    let before = bob.session_bytes("alice").await;

    relay.attack(per_message(|_, message| vec![flip_bit(message)]));
    alice.send("bob", "tampered on the way").await;
    let events = bob.receive_until(|e| !e.is_empty()).await;
    assert_eq!(events, [Event::Undecryptable { peer: "alice".into() }]);
    assert_eq!(bob.session_bytes("alice").await, before, "the session is byte-identical");

    relay.attack(Honest);
    alice.send("bob", "honest again").await;
    bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(bob.received_texts("alice").await, ["hello bob", "honest again"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_duplicated_ciphertext_is_shown_once() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut bob) = alice_to_proxied_bob(&relay, dir.path()).await;

    // Every message twice, then once more under a fresh relay id, as a replay would come.
    let captured: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = captured.clone();
    relay.attack(per_message(move |_, message| {
        log.lock().unwrap().push(message.clone());
        let mut replay = message.clone();
        replay["id"] = json!(message["id"].as_i64().unwrap() + 1_000_000);
        vec![message.clone(), message, replay]
    }));
    alice.send("bob", "once").await;
    alice.send("bob", "twice").await;
    let events = bob.receive_until(|e| received(e) == 2).await;
    assert_eq!(received(&events), 2, "{events:?}");
    assert!(!has(&events, |e| matches!(e, Event::Undecryptable { .. })), "{events:?}");
    assert_eq!(bob.received_texts("alice").await, ["hello bob", "once", "twice"]);

    // An old message replayed much later changes nothing: no text, no state.
    let before = bob.session_bytes("alice").await;
    let old = captured.lock().unwrap()[0].clone();
    let replay = ReceivedMessage {
        id: 5_000_000,
        from: "alice".into(),
        received_at: 0,
        envelope: RawValue::from_string(old["envelope"].to_string()).unwrap(),
    };
    let events = bob.client.receive(&bob.relay, vec![replay]).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(bob.session_bytes("alice").await, before);
    assert_eq!(bob.received_texts("alice").await, ["hello bob", "once", "twice"]);
}

// ---- withheld, reordered and delayed messages ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_messages_are_reported_missing() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut bob) = alice_to_proxied_bob(&relay, dir.path()).await;

    relay.attack(per_message(|n, message| if n == 2 || n == 3 { vec![] } else { vec![message] }));
    for n in 1..=5 {
        alice.send("bob", &format!("message {n}")).await;
    }
    let events = bob.receive_until(|e| received(e) == 3).await;
    assert!(
        has(&events, |e| matches!(e, Event::Missing { peer, count: 2 } if peer == "alice")),
        "the user is told 2 messages from alice are missing: {events:?}"
    );
    assert_eq!(bob.client.store().counters("alice").await.unwrap().missing(), 2);

    // The relay kept them queued (never acknowledged): an honest reconnect brings them.
    relay.attack(Honest);
    bob.reconnect().await;
    let events = bob.receive_until(|e| received(e) == 2).await;
    assert_eq!(received(&events), 2, "{events:?}");
    assert_eq!(bob.client.store().counters("alice").await.unwrap().missing(), 0);
    let mut texts = bob.received_texts("alice").await;
    texts.sort();
    assert_eq!(
        texts,
        ["hello bob", "message 1", "message 2", "message 3", "message 4", "message 5"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_delayed_messages_arrive_once_each() {
    let relay = LyingRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut bob) = alice_to_proxied_bob(&relay, dir.path()).await;

    // Hold the first back until the fourth has passed, and swap the second and third.
    let mut held: Vec<(usize, Value)> = Vec::new();
    relay.attack(per_message(move |n, message| match n {
        1 | 2 => {
            held.push((n, message));
            vec![]
        }
        3 => {
            let second = held.iter().position(|(k, _)| *k == 2).unwrap();
            vec![message, held.remove(second).1]
        }
        4 => vec![message, held.remove(0).1],
        _ => vec![message],
    }));
    for n in 1..=4 {
        alice.send("bob", &format!("message {n}")).await;
    }
    let events = bob.receive_until(|e| received(e) == 4).await;
    assert_eq!(received(&events), 4, "{events:?}");
    assert!(!has(&events, |e| matches!(e, Event::Undecryptable { .. })), "{events:?}");
    assert_eq!(bob.client.store().counters("alice").await.unwrap().missing(), 0);
    let history = bob.client.store().history("alice", 100).await.unwrap();
    let mut counters: Vec<u64> = history.iter().filter_map(|m| m.counter).collect();
    counters.sort_unstable();
    assert_eq!(counters, [1, 2, 3, 4, 5], "each record once");
}

// ---- delivery the relay keeps quiet about ----------------------------------------------------

/// Alice (behind a relay that hides deliveries from her) has sent "did you get this?", and
/// Bob (direct) has received it.
async fn quiet_about_a_message_bob_received() -> (LyingRelay, tempfile::TempDir, Person, Person) {
    let relay = LyingRelay::start().await;
    relay.attack(HideDelivery);
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Person::register(&dir.path().join("bob"), &relay.direct, "bob").await;
    let alice = Person::register(&dir.path().join("alice"), &relay.proxied, "alice").await;
    alice.send("bob", "did you get this?").await;
    let events = bob.receive_until(|e| received(e) == 1).await;
    assert_eq!(received(&events), 1, "{events:?}");
    (relay, dir, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_an_unaccepted_identity_confirms_and_counts_nothing() {
    let (relay, _dir, mut alice, bob) = quiet_about_a_message_bob_received().await;
    bob.send("alice", "yes").await;
    alice.receive_until(|e| received(e) == 1).await;
    alice.send("bob", "and this one?").await;
    let status = |history: &[sotto_client::store::StoredMessage]| {
        history.iter().filter(|m| m.outgoing).map(|m| m.status.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        status(&alice.client.store().history("bob", 10).await.unwrap()),
        ["delivered", "stored"]
    );
    let counters = alice.client.store().counters("bob").await.unwrap();

    // The relay's own "bob" writes a first message to Alice with her public bundle, saying it
    // received all of Alice's records, numbered far ahead of Bob's.
    let alice_id = UserId::parse("alice").unwrap();
    let bundle = bob.relay.request_bundle(&alice_id).await.unwrap();
    let mallory = IdentityKeyPair::generate(&mut rand::rng());
    let fake_bob = UserId::parse("bob").unwrap();
    let mut session = Session::initiate(
        LocalParty { user: &fake_bob, identity: &mallory },
        &alice_id,
        &bundle,
        &mut rand::rng(),
    )
    .unwrap();
    let record = Record::text("trust me", 1_700_000_000_000, 1_000, u64::MAX, MessageDigest::NONE);
    let (envelope, _) = session.encrypt(&record).unwrap();
    let forged: Value = serde_json::from_str(&envelope.to_json()).unwrap();
    relay.attack(per_message(move |_, mut message| {
        message["envelope"] = forged.clone();
        vec![message]
    }));
    bob.send("alice", "whatever").await;
    let events = alice.receive_until(|e| received(e) == 1).await;
    assert!(
        has(&events, |e| matches!(e, Event::KeyChanged { peer } if peer == "bob")),
        "{events:?}"
    );
    assert!(!has(&events, |e| matches!(e, Event::Delivered(_))), "confirms nothing: {events:?}");
    assert!(!has(&events, |e| matches!(e, Event::Missing { .. })), "{events:?}");
    assert_eq!(alice.received_texts("bob").await, ["yes", "trust me"], "shown, after the warning");
    assert_eq!(
        status(&alice.client.store().history("bob", 10).await.unwrap()),
        ["delivered", "stored"],
        "the unaccepted identity's word changes nothing of ours"
    );
    let after = alice.client.store().counters("bob").await.unwrap();
    assert_eq!(after.received_contiguous, counters.received_contiguous);
    assert_eq!(after.received_above, counters.received_above);
    assert_eq!(after.peer_received, counters.peer_received);
    assert_eq!(after.last_counter, 1_000, "what Alice's next record names follows it");

    // Accepting it starts the count afresh: its next record sets where counting starts.
    let (shown, _) = alice.client.safety_number(&fake_bob).await.unwrap();
    assert_eq!(
        alice.client.trust(&fake_bob, Some(shown.digits())).await.unwrap(),
        Trusted::Accepted(shown)
    );
    let reset = alice.client.store().counters("bob").await.unwrap();
    assert_eq!((reset.received_contiguous, reset.received_above.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_reply_confirms_a_delivery_the_relay_kept_quiet_about() {
    let (_relay, _dir, mut alice, bob) = quiet_about_a_message_bob_received().await;
    // Bob's device saved it; the relay tells Alice nothing of it, even when asked.
    let events = alice.client.refresh_delivery(&alice.relay).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    let events = alice.receive_until(|_| true).await;
    assert!(!has(&events, |e| matches!(e, Event::Delivered(_))), "{events:?}");
    let status = |history: &[sotto_client::store::StoredMessage]| {
        history.iter().find(|m| m.outgoing).map(|m| m.status.clone())
    };
    assert_eq!(status(&alice.client.store().history("bob", 10).await.unwrap()).unwrap(), "stored");

    // Bob answers: his record names Alice's as the last one he received.
    bob.send("alice", "yes").await;
    let events = alice.receive_until(|e| received(e) == 1).await;
    assert!(
        has(
            &events,
            |e| matches!(e, Event::Delivered(m) if m.body.as_deref() == Some("did you get this?"))
        ),
        "Bob's word shows Alice's message delivered: {events:?}"
    );
    assert!(!has(&events, |e| matches!(e, Event::DigestMismatch { .. })), "{events:?}");
    let history = alice.client.store().history("bob", 10).await.unwrap();
    assert_eq!(status(&history).unwrap(), "delivered");
}
