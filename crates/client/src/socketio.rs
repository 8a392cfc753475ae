//! A small Socket.IO client (Engine.IO v4 over WebSocket only), enough to talk to the relay.
//!
//! The wire, in the order a connection sees it:
//!
//! ```text
//! GET ws://HOST/socket.io/?EIO=4&transport=websocket
//! ← 0{"sid":…,"pingInterval":…,"pingTimeout":…}   Engine.IO open
//! → 40                                              Socket.IO connect, namespace "/"
//! ← 40{"sid":…}                                     connected (44{…}: refused)
//! → 42<id>["event",{…}]   ← 43<id>[{…}]             an event with an acknowledgement
//! ← 42["event",{…}]                                 a push from the relay
//! ← 2   → 3                                         heartbeat: the server pings
//! ```
//!
//! One reader task answers pings, completes acknowledgements and forwards pushes; one writer
//! task owns the socket's sink, so `emit` can be called from anywhere. The writer sends what
//! is queued together (one flush, so usually one system call, for a burst of frames).
//! Reconnection is the caller's business: a closed client stays closed, and a new one is made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest frame accepted from the relay.
const MAX_INCOMING_FRAME: usize = 4 * 1024 * 1024;
/// How much tungstenite reads from the socket at a time. It zero-fills that much of its buffer
/// before every read, and its default of 128 KiB made the zeroing a fifth of `sotto bench`'s
/// CPU (a push is well under 1 KiB); larger frames are simply read in several pieces.
const WEBSOCKET_READ_BUFFER: usize = 8 * 1024;

/// Most frames the writer queues before it flushes them to the socket.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL is not an `http(s)://` or `ws(s)://` URL.
    #[error("invalid server URL {0:?}")]
    InvalidUrl(String),
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Connect(String),
    /// The server refused the Socket.IO connection.
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// The server spoke something other than Engine.IO v4.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// A payload could not be encoded or an answer decoded.
    #[error("payload error: {0}")]
    Payload(#[from] serde_json::Error),
}

/// A push from the relay: the event name and its first argument, as the JSON text the relay
/// sent (so strict decoders downstream see exactly what arrived).
#[derive(Debug, Clone)]
pub struct Push {
    /// The event name.
    pub event: String,
    /// Its payload (`null` when it had none).
    pub data: Box<RawValue>,
    /// When its frame was read from the socket (before any queueing in this process).
    pub arrived: Instant,
}

/// The parts of the Engine.IO open packet the client uses.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    /// How often the server pings, in milliseconds.
    ping_interval: u64,
    /// How long the server waits for the answer, in milliseconds.
    ping_timeout: u64,
}

impl OpenPacket {
    /// Engine.IO's defaults, for a server that leaves the values out.
    const DEFAULT: Self = Self { ping_interval: 25_000, ping_timeout: 20_000 };

    fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or(Self::DEFAULT)
    }

    /// How long the connection may stay silent before it counts as dead: a ping is due every
    /// interval, and the server itself gives the answer the timeout on top.
    fn silence_limit(&self) -> Duration {
        Duration::from_millis(self.ping_interval.saturating_add(self.ping_timeout))
    }
}

/// What the reader task and the handle share.
#[derive(Debug, Default)]
struct Shared {
    /// Acknowledgements awaited, by id. Never held across an await.
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    /// Set once the connection is gone.
    closed: AtomicBool,
}

/// A connected Socket.IO client.
#[derive(Debug, Clone)]
pub struct SocketIoClient {
    /// Frames to send.
    outgoing: mpsc::UnboundedSender<Message>,
    /// Next acknowledgement id.
    next_ack: Arc<AtomicU64>,
    /// Shared with the reader.
    shared: Arc<Shared>,
}

/// Chooses ring as rustls's cryptography, once per process, before the first `wss://`
/// connection (rustls needs a provider and this build carries only ring). Certificates are
/// checked against the system's trust store (`SSL_CERT_FILE` / `SSL_CERT_DIR` override it).
fn install_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Turns `http://host:port` (or `ws://…`) into the Engine.IO WebSocket URL.
pub fn websocket_url(server: &str) -> Result<String, TransportError> {
    let url = url::Url::parse(server).map_err(|_| TransportError::InvalidUrl(server.to_owned()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(TransportError::InvalidUrl(server.to_owned())),
    };
    let host = url.host_str().ok_or_else(|| TransportError::InvalidUrl(server.to_owned()))?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!("{scheme}://{host}{port}/socket.io/?EIO=4&transport=websocket"))
}

/// The `host[:port]` a client connecting to `server` presents (what it signs at login).
pub fn authority(server: &str) -> Result<String, TransportError> {
    let url = url::Url::parse(server).map_err(|_| TransportError::InvalidUrl(server.to_owned()))?;
    let host = url.host_str().ok_or_else(|| TransportError::InvalidUrl(server.to_owned()))?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SocketIoClient {
    /// Connects to `server` (`http://host:port`), completes the Engine.IO and Socket.IO
    /// handshakes within `timeout`, and returns the client and its stream of pushes.
    pub async fn connect(
        server: &str,
        timeout: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Push>), TransportError> {
        tokio::time::timeout(timeout, Self::connect_inner(server))
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    async fn connect_inner(
        server: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Push>), TransportError> {
        let url = websocket_url(server)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING_FRAME))
            .max_frame_size(Some(MAX_INCOMING_FRAME))
            .read_buffer_size(WEBSOCKET_READ_BUFFER);
        install_tls_provider();
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|error| TransportError::Connect(handshake_failure(&error)))?;
        let (mut sink, mut stream) = socket.split();

        // Engine.IO open, then Socket.IO connect on "/".
        let open = next_text(&mut stream).await?;
        let Some(open) = open.strip_prefix('0') else {
            return Err(TransportError::Protocol(format!("expected an open packet, got {open:?}")));
        };
        let silence_limit = OpenPacket::parse(open).silence_limit();
        sink.send(Message::text("40")).await.map_err(|e| TransportError::Connect(e.to_string()))?;
        loop {
            let packet = next_text(&mut stream).await?;
            match packet.as_str() {
                "2" => {
                    sink.send(Message::text("3")).await.map_err(|_| TransportError::Closed)?;
                }
                text if text.starts_with("40") => break,
                text if text.starts_with("44") => {
                    return Err(TransportError::Refused(crate::display::printable(&text[2..])));
                }
                other => {
                    return Err(TransportError::Protocol(format!("unexpected packet {other:?}")));
                }
            }
        }

        let shared = Arc::new(Shared::default());
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Message>();
        let (pushes, pushes_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(MAX_FRAMES_PER_FLUSH);
            'writing: while to_send.recv_many(&mut queued, MAX_FRAMES_PER_FLUSH).await > 0 {
                for message in queued.drain(..) {
                    let close = matches!(message, Message::Close(_));
                    if sink.feed(message).await.is_err() || close {
                        break 'writing;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_shared = shared.clone();
        let pong = outgoing.clone();
        tokio::spawn(async move {
            // The server pings every `pingInterval`: a connection silent for longer than that
            // and the `pingTimeout` is dead (a laptop that slept, a NAT that forgot the
            // connection), even though no FIN ever came. Ending it here ends the pushes, and
            // the caller reconnects.
            // One timer pushed back at each frame (a later deadline only updates the entry),
            // rather than a timer made and removed per frame.
            let silence = tokio::time::sleep(silence_limit);
            tokio::pin!(silence);
            loop {
                let message = tokio::select! {
                    biased;
                    message = stream.next() => message,
                    () = &mut silence => break,
                };
                let Some(Ok(message)) = message else { break };
                let arrived = Instant::now();
                silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
                let Message::Text(text) = message else {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                if !handle_packet(text.as_str(), arrived, &reader_shared, &pong, &pushes) {
                    break;
                }
            }
            reader_shared.closed.store(true, Ordering::SeqCst);
            // Dropping the senders fails every waiting request with `Closed`.
            reader_shared.pending().clear();
        });
        Ok((Self { outgoing, next_ack: Arc::new(AtomicU64::new(0)), shared }, pushes_rx))
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::SeqCst) && !self.outgoing.is_closed()
    }

    /// Emits an event without asking for an acknowledgement.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), TransportError> {
        let packet =
            format!("42[{},{}]", serde_json::to_string(event)?, serde_json::to_string(data)?);
        self.send_raw(packet)
    }

    /// Emits an event and waits up to `timeout` for its acknowledgement's first argument.
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<Value, TransportError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.pending().insert(id, tx);
        let packet =
            format!("42{id}[{},{}]", serde_json::to_string(event)?, serde_json::to_string(data)?);
        if let Err(error) = self.send_raw(packet) {
            self.shared.pending().remove(&id);
            return Err(error);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => {
                self.shared.pending().remove(&id);
                Err(TransportError::Timeout)
            }
        }
    }

    /// [`SocketIoClient::request`], decoding the answer.
    pub async fn request_as<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        Ok(serde_json::from_value(self.request(event, data, timeout).await?)?)
    }

    /// Sends a raw Engine.IO text packet. For tests and fuzzers that need to send what a
    /// well-behaved client never would.
    pub fn send_raw(&self, packet: String) -> Result<(), TransportError> {
        if !self.is_open() {
            return Err(TransportError::Closed);
        }
        self.outgoing.send(Message::text(packet)).map_err(|_| TransportError::Closed)
    }

    /// Sends a raw WebSocket message (binary frames, oversized frames) — for tests.
    pub fn send_message(&self, message: Message) -> Result<(), TransportError> {
        self.outgoing.send(message).map_err(|_| TransportError::Closed)
    }

    /// Disconnects: Socket.IO disconnect, then the WebSocket close.
    pub fn close(&self) {
        let _ = self.outgoing.send(Message::text("41"));
        let _ = self.outgoing.send(Message::Close(None));
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

async fn next_text<S>(stream: &mut S) -> Result<String, TransportError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(TransportError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(TransportError::Connect(error.to_string())),
        }
    }
}

/// Splits `<digits>rest` into the number and the rest.
fn leading_id(text: &str) -> (Option<u64>, &str) {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    (text[..end].parse().ok(), &text[end..])
}

/// Handles one packet that arrived at `arrived`; false when the connection is over.
fn handle_packet(
    text: &str,
    arrived: Instant,
    shared: &Shared,
    outgoing: &mpsc::UnboundedSender<Message>,
    pushes: &mpsc::UnboundedSender<Push>,
) -> bool {
    match text.as_bytes().first() {
        Some(b'2') => {
            let _ = outgoing.send(Message::text("3"));
            true
        }
        Some(b'1') => false,
        Some(b'4') => match text.as_bytes().get(1) {
            Some(b'1') => false,
            Some(b'2') => {
                let (_, body) = leading_id(&text[2..]);
                if let Ok(args) = serde_json::from_str::<Vec<&RawValue>>(body)
                    && let Some(Ok(event)) = args.first().map(|e| serde_json::from_str(e.get()))
                {
                    // Already checked by the parse above: copied, not parsed again.
                    let data = match args.get(1) {
                        Some(data) => (*data).to_owned(),
                        None => RawValue::NULL.to_owned(),
                    };
                    let _ = pushes.send(Push { event, data, arrived });
                }
                true
            }
            Some(b'3') => {
                let (id, body) = leading_id(&text[2..]);
                if let (Some(id), Ok(Value::Array(mut args))) =
                    (id, serde_json::from_str::<Value>(body))
                {
                    let first = if args.is_empty() { Value::Null } else { args.swap_remove(0) };
                    let waiter = shared.pending().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(first);
                    }
                }
                true
            }
            _ => true,
        },
        _ => true,
    }
}

/// Why the WebSocket handshake failed, in words: an HTTP answer instead of the upgrade is
/// given with its status and the start of its text (a relay at its connection limit answers
/// 503 and says so).
fn handshake_failure(error: &tokio_tungstenite::tungstenite::Error) -> String {
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        return error.to_string();
    };
    let text = response
        .body()
        .as_deref()
        .map(|body| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned())
        .unwrap_or_default();
    if text.is_empty() {
        format!("the server answered {}", response.status())
    } else {
        format!("the server answered {}: {text}", response.status())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_engine_io_websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:3000").unwrap(),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            websocket_url("https://chat.example/").unwrap(),
            "wss://chat.example/socket.io/?EIO=4&transport=websocket"
        );
        assert!(websocket_url("ftp://x").is_err());
        assert_eq!(authority("http://localhost:3000").unwrap(), "localhost:3000");
        assert_eq!(authority("https://chat.example").unwrap(), "chat.example");
    }

    #[test]
    fn the_open_packet_sets_how_long_silence_is_tolerated() {
        let open = r#"{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(OpenPacket::parse(open).silence_limit(), Duration::from_secs(45));
        let custom = r#"{"sid":"a","pingInterval":1000,"pingTimeout":500}"#;
        assert_eq!(OpenPacket::parse(custom).silence_limit(), Duration::from_millis(1500));
        assert_eq!(OpenPacket::parse("{}").silence_limit(), Duration::from_secs(45), "defaults");
    }

    /// A server that completes the handshakes and then never sends another frame, nor closes:
    /// what a connection looks like after a laptop slept or a NAT forgot it. The client gives
    /// up once a ping is overdue, so its caller reconnects.
    #[tokio::test]
    async fn a_connection_that_falls_silent_is_closed_once_a_ping_is_overdue() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":200,"pingTimeout":100}"#;
            socket.send(Message::text(open)).await.unwrap();
            let connect = socket.next().await.unwrap().unwrap();
            assert_eq!(connect.to_text().unwrap(), "40");
            socket.send(Message::text(r#"40{"sid":"n"}"#)).await.unwrap();
            // Silent from now on, with the connection held open.
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(socket);
        });
        let (client, mut pushes) =
            SocketIoClient::connect(&format!("http://{address}"), Duration::from_secs(5))
                .await
                .unwrap();
        assert!(client.is_open());
        let ended = tokio::time::timeout(Duration::from_secs(3), pushes.recv()).await;
        assert!(matches!(ended, Ok(None)), "the pushes end once 300 ms pass without a frame");
        assert!(!client.is_open());
        server.abort();
    }

    #[test]
    fn leading_ids_are_split_off() {
        assert_eq!(leading_id("12[1]"), (Some(12), "[1]"));
        assert_eq!(leading_id("[1]"), (None, "[1]"));
    }
}
