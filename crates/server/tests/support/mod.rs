//! A relay on 127.0.0.1:0 with a real SQLite file, and registered test users talking to it
//! over real sockets.

#![allow(dead_code)]

use std::time::Duration;

use rand_core::Rng;
use serde_json::value::RawValue;
use sotto_client::relay::{Incoming, ReceivedMessage, RelayClient};
use sotto_client::socketio::Push;
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::wire::b64;
use sotto_protocol::{IdentityKeyPair, SignedPrekey, UserId};
use sotto_server::Config;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(10);

/// A terminal client (`sotto_client::Client`, with its store) registered at a test relay,
/// its home a temporary folder of its own (deleted when this is dropped).
pub struct TerminalUser {
    pub home: tempfile::TempDir,
    pub id: UserId,
    pub client: sotto_client::Client,
    pub relay: RelayClient,
    pub pushes: mpsc::UnboundedReceiver<Push>,
}

impl TerminalUser {
    /// Registers `name` (100 one-time prekeys, as the client does) in a fresh home.
    pub async fn register(server: &TestServer, name: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let id = UserId::parse(name).unwrap();
        let (client, relay, pushes) =
            sotto_client::Client::register(home.path(), &server.url, &id).await.unwrap();
        Self { home, id, client, relay, pushes }
    }
}

/// A relay running in this process.
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub database_url: String,
    pub db_path: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("relay.db");
        let database_url = format!("sqlite:{}", db_path.display());
        Self::start_on(dir, db_path, database_url, configure).await
    }

    async fn start_on(
        dir: tempfile::TempDir,
        db_path: std::path::PathBuf,
        database_url: String,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, database_url.clone());
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sotto_server::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let url = format!("http://{addr}");
        wait_until_healthy(&url).await;
        Self { url, addr, database_url, db_path, stop: Some(stop), task: Some(task), dir }
    }

    /// Stops gracefully and starts again on a new port with the same database.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_on(dir, self.db_path.clone(), self.database_url.clone(), |_| {}).await
    }

    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("graceful shutdown").unwrap();
        }
    }

    /// Reads one value from the relay's database.
    pub async fn query_i64(&self, sql: &'static str) -> i64 {
        let pool = sqlx::SqlitePool::connect(&self.database_url).await.unwrap();
        let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        value
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

/// A minimal HTTP/1.1 GET, so tests need no HTTP client crate.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let text = http_get_raw(addr, path, &[]).await;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A GET with extra request headers; the whole response, head and body, as text.
pub async fn http_get_raw(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String =
        headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

async fn wait_until_healthy(url: &str) {
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/healthz").await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relay did not become healthy");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A user with keys, connected to the relay.
pub struct TestUser {
    pub id: UserId,
    pub identity: IdentityKeyPair,
    pub signed_prekey: SignedPrekey,
    pub one_time_prekeys: Vec<OneTimePrekey>,
    pub client: RelayClient,
    pub pushes: mpsc::UnboundedReceiver<Push>,
    /// Pushes read while looking for something else.
    pub seen: Vec<Incoming>,
}

pub fn keys(opks: u32) -> (IdentityKeyPair, SignedPrekey, Vec<OneTimePrekey>) {
    let mut rng = rand::rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let signed_prekey = SignedPrekey::generate(&identity, 1, 1_767_225_600, &mut rng);
    let one_time = (1..=opks).map(|id| OneTimePrekey::generate(id, &mut rng)).collect();
    (identity, signed_prekey, one_time)
}

impl TestUser {
    /// Registers `name` with 10 one-time prekeys.
    pub async fn register(server: &TestServer, name: &str) -> Self {
        Self::register_with(server, name, 10).await
    }

    pub async fn register_with(server: &TestServer, name: &str, opks: u32) -> Self {
        let (identity, signed_prekey, one_time_prekeys) = keys(opks);
        let id = UserId::parse(name).unwrap();
        let (client, pushes) = RelayClient::connect(&server.url, WAIT).await.unwrap();
        let publics: Vec<_> = one_time_prekeys.iter().map(|k| k.public()).collect();
        let answer =
            client.register(&id, &identity, signed_prekey.public(), &publics).await.unwrap();
        assert_eq!(answer.user_id, id.as_str());
        assert_eq!((answer.queued, answer.one_time_prekeys), (0, opks as usize));
        assert_eq!(answer.one_time_prekeys_from, (opks > 0).then_some(1), "the lowest id held");
        Self { id, identity, signed_prekey, one_time_prekeys, client, pushes, seen: Vec::new() }
    }

    /// Opens a new connection and logs in.
    pub async fn reconnect(&mut self, server: &TestServer) -> sotto_client::relay::LoginAnswer {
        self.reconnect_at(&server.url).await
    }

    /// Opens a new connection to `url` (the relay, or a proxy in front of it) and logs in.
    pub async fn reconnect_at(&mut self, url: &str) -> sotto_client::relay::LoginAnswer {
        self.client.close();
        let (client, pushes) = RelayClient::connect(url, WAIT).await.unwrap();
        let answer = client.login(&self.id, &self.identity).await.unwrap();
        self.client = client;
        self.pushes = pushes;
        self.seen.clear();
        answer
    }

    /// The next push, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Incoming> {
        match tokio::time::timeout(wait, self.pushes.recv()).await {
            Ok(Some(push)) => Some(Incoming::from_push(push)),
            _ => None,
        }
    }

    /// Collects `count` messages (other pushes are kept in `seen`).
    pub async fn messages(&mut self, count: usize) -> Vec<ReceivedMessage> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Messages(messages)) => out.extend(messages),
                Some(other) => self.seen.push(other),
                None => panic!("{} got {} of {count} messages", self.id, out.len()),
            }
        }
        out
    }

    /// Collects `count` messages, acknowledging each push as it arrives (as clients do, and as
    /// a catch-up of more than two pages needs).
    pub async fn messages_acknowledged(&mut self, count: usize) -> Vec<ReceivedMessage> {
        let mut out = Vec::new();
        while out.len() < count {
            let push = self.messages(1).await;
            let ids: Vec<i64> = push.iter().map(|m| m.id).collect();
            self.client.ack(&ids).await.unwrap();
            out.extend(push);
        }
        out
    }

    /// The next receipts pushed (`message:delivered`), waiting at most `WAIT`; other pushes
    /// are skipped.
    pub async fn receipts(&mut self) -> Vec<sotto_client::relay::Receipt> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Delivered(receipts)) => return receipts,
                Some(_) => {}
                None => panic!("{} was told of no delivery", self.id),
            }
        }
    }

    /// Asserts that no message arrives within `wait`.
    pub async fn no_messages(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Messages(messages)) => {
                    panic!("{} got unexpected messages {:?}", self.id, messages)
                }
                Some(other) => self.seen.push(other),
                None => return,
            }
        }
    }
}

/// An envelope of the documented shape with random ciphertext: the relay never decrypts, so
/// this is all relay tests need. `n` goes into the header so envelopes differ.
pub fn envelope(n: u32) -> Box<RawValue> {
    envelope_of_size(n, 64 + 16)
}

pub fn envelope_of_size(n: u32, ciphertext_len: usize) -> Box<RawValue> {
    let mut rng = rand::rng();
    let mut ciphertext = vec![0u8; ciphertext_len];
    rng.fill_bytes(&mut ciphertext);
    let mut dh = [4u8; 65];
    rng.fill_bytes(&mut dh[1..]);
    let json = format!(
        r#"{{"version":1,"suite":1,"header":{{"dh":"{}","pn":0,"n":{n}}},"ciphertext":"{}"}}"#,
        b64(&dh),
        b64(&ciphertext)
    );
    RawValue::from_string(json).unwrap()
}

/// A fresh client id.
pub fn client_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    b64(&bytes)
}

/// A TCP proxy in front of the relay that can stop passing the relay's bytes on, as a client
/// that stops reading would (a frozen tab, a stalled mobile link): the relay's writes then pile
/// up in its socket and in the connection's outgoing buffer.
pub struct PausingProxy {
    pub url: String,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl PausingProxy {
    /// Proxies connections to `listener` (bound before the relay starts, so that the relay can
    /// accept logins signed for the proxy's address) to `relay`.
    pub fn start(listener: tokio::net::TcpListener, relay: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = format!("http://{}", listener.local_addr().unwrap());
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = paused.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                // A small receive buffer keeps what the proxy's own socket holds small, so a
                // pause is felt by the relay after a few kilobytes.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let upstream = socket.connect(relay).await.unwrap();
                let (mut from_relay, mut to_relay) = upstream.into_split();
                let (mut from_client, mut to_client) = client.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_relay).await;
                    let _ = to_relay.shutdown().await;
                });
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    loop {
                        if flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        match from_relay.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to_client.write_all(&buffer[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_client.shutdown().await;
                });
            }
        });
        Self { url, paused, task }
    }

    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Alice, and Bob logged in through a [`PausingProxy`] on `listener` (the relay must accept
/// logins signed for its address): Bob is caught up and receiving live, as a first message
/// from Alice through the proxy shows. Then Alice sends `count` messages of 16 KiB with the
/// proxy paused, as if Bob had stopped reading; returns the ids sent, and the proxy, still
/// paused.
pub async fn alice_sends_while_bob_stops_reading(
    server: &TestServer,
    listener: tokio::net::TcpListener,
    count: u32,
) -> (TestUser, TestUser, PausingProxy, Vec<i64>) {
    let alice = TestUser::register(server, "alice").await;
    let mut bob = TestUser::register(server, "bob").await;
    let proxy = PausingProxy::start(listener, server.addr);
    bob.reconnect_at(&proxy.url).await;
    let first = alice.client.send_raw("bob", &client_id(), &envelope(0)).await.unwrap().id;
    assert_eq!(bob.messages_acknowledged(1).await[0].id, first);
    proxy.pause();
    let mut sent = Vec::new();
    for n in 1..=count {
        let big = envelope_of_size(n, 16 * 1024 + 16);
        sent.push(alice.client.send_raw("bob", &client_id(), &big).await.unwrap().id);
    }
    (alice, bob, proxy, sent)
}

impl Drop for PausingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
