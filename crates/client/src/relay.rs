//! The relay's Socket.IO interface (docs/PROTOCOL.md, Part 2) as typed calls: challenge,
//! register, login, prekey upload, bundle fetch, send, acknowledge, status, and the pushes the
//! relay sends.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use sotto_protocol::prekeys::{OneTimePrekeyPublic, SignedPrekeyPublic};
use sotto_protocol::signing::authentication_message;
use sotto_protocol::wire::{
    self, BundleJson, OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson,
};
use sotto_protocol::{Envelope, IdentityKeyPair, PrekeyBundle, UserId};
use tokio::sync::mpsc;

use crate::display::printable;
use crate::socketio::{Push, SocketIoClient, TransportError, authority};

/// How long to wait for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal from the relay: its stable code and explanation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The stable code (`user_taken`, `rate_limited`, …).
    pub error: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// Whether the same request may succeed later.
    #[serde(default)]
    pub retryable: bool,
    /// For rate limits: how long to wait.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay refused (its words made printable: a relay is not trusted with the terminal).
    #[error("{}: {}", printable(&.0.error), printable(&.0.message))]
    Refused(Refusal),
    /// The relay answered something this client does not understand. The text may quote
    /// the relay (serde names an unknown field as sent), so it is made printable too.
    #[error("unexpected answer from the relay: {}", printable(.0))]
    Unexpected(String),
}

/// A wait of `ms` milliseconds in the unit a person would use.
fn wait_in_words(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms.div_ceil(1_000)),
        _ => format!("{} min", ms.div_ceil(60_000)),
    }
}

impl Refusal {
    /// The refusal in plain language.
    pub fn explain(&self) -> String {
        match self.error.as_str() {
            "unknown_user" => "no such user on this relay".to_owned(),
            "user_taken" => "that user id is taken; choose another".to_owned(),
            "rate_limited" => format!(
                "the relay is rate-limiting you; try again in {}",
                wait_in_words(self.retry_after_ms.unwrap_or(1000))
            ),
            "queue_full" => "the recipient has too many undelivered messages".to_owned(),
            "too_many_connections" => {
                "this user has too many connections to the relay open; close one (another \
                 terminal, browser tab or device) and try again"
                    .to_owned()
            }
            "too_large" => "the message is too large".to_owned(),
            "authentication_failed" => {
                "the relay does not recognise this identity (was the user id released?)".to_owned()
            }
            "invalid_user_id" => format!("invalid user id: {}", printable(&self.message)),
            _ => format!(
                "the relay refused: {} ({})",
                printable(&self.message),
                printable(&self.error)
            ),
        }
    }
}

impl RelayError {
    /// The refusal code, if the relay refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            RelayError::Refused(refusal) => Some(&refusal.error),
            _ => None,
        }
    }

    /// Whether retrying later can help (a transport failure, or a retryable refusal).
    pub fn retryable(&self) -> bool {
        match self {
            RelayError::Transport(_) => true,
            RelayError::Refused(refusal) => refusal.retryable,
            RelayError::Unexpected(_) => false,
        }
    }
}

/// The answer to a login or registration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginAnswer {
    /// The normalised user id.
    pub user_id: String,
    /// Messages waiting (they arrive as pushes).
    pub queued: usize,
    /// One-time prekeys the relay holds for this user.
    pub one_time_prekeys: usize,
    /// The lowest id among them: every lower one was handed out. `None` when none are left,
    /// and from relays older than the field.
    #[serde(default)]
    pub one_time_prekeys_from: Option<u32>,
}

impl LoginAnswer {
    /// What the answer says the relay holds.
    pub fn prekeys_held(&self) -> PrekeysHeld {
        PrekeysHeld::read(self.one_time_prekeys, self.one_time_prekeys_from)
    }
}

/// Which one-time prekeys the relay says it holds (PROTOCOL.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrekeysHeld {
    /// None: every key uploaded was handed out.
    None,
    /// Those from this id on.
    From(u32),
    /// Some, lowest id not said (a relay older than the field).
    Unknown,
}

impl PrekeysHeld {
    /// From an answer's count and lowest id: a count of zero is "none", whatever the id.
    pub fn read(count: usize, from: Option<u32>) -> Self {
        match (count, from) {
            (0, _) => Self::None,
            (_, Some(id)) => Self::From(id),
            (_, None) => Self::Unknown,
        }
    }
}

/// The answer to a prekey upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadAnswer {
    /// One-time prekeys the relay now holds for this user.
    pub one_time_prekeys: usize,
    /// The lowest id among them: every lower one was handed out. `None` when none are left,
    /// and from relays older than the field.
    #[serde(default)]
    pub one_time_prekeys_from: Option<u32>,
    /// How many of the upload's one-time prekeys, from its start, the relay kept; the rest
    /// were over its cap. `None` from relays older than the field (taken as all kept).
    #[serde(default)]
    pub one_time_prekeys_kept: Option<usize>,
}

impl UploadAnswer {
    /// What the answer says the relay holds.
    pub fn prekeys_held(&self) -> PrekeysHeld {
        PrekeysHeld::read(self.one_time_prekeys, self.one_time_prekeys_from)
    }
}

/// The answer to `message:send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SendAnswer {
    /// The relay's id for the message.
    pub id: i64,
    /// Whether the relay already had it.
    pub duplicate: bool,
}

/// A challenge to sign.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeAnswer {
    /// The nonce, base64url.
    pub nonce: String,
    /// The host the relay saw.
    pub host: String,
    /// Expiry, Unix milliseconds.
    pub expires_at: i64,
}

/// A message pushed by the relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage {
    /// The relay's id; acknowledge with it.
    pub id: i64,
    /// The authenticated sender.
    pub from: String,
    /// When the relay received it, Unix milliseconds.
    pub received_at: i64,
    /// The envelope JSON.
    pub envelope: Box<RawValue>,
}

/// A delivery receipt pushed by the relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// The relay's id of the message.
    pub id: i64,
    /// The sender's own id of it.
    pub client_id: String,
    /// Who acknowledged it.
    pub to: String,
}

/// A push from the relay, decoded.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// Messages, oldest first.
    Messages(Vec<ReceivedMessage>),
    /// Messages you sent were acknowledged by their recipients.
    Delivered(Vec<Receipt>),
    /// A contact came online.
    Joined(String),
    /// A contact went offline.
    Left(String),
    /// Your one-time prekeys are running low.
    PrekeysLow(usize),
    /// Something else (e.g. the `user:public-key` echo of a bundle request).
    Other(Push),
}

impl Incoming {
    /// Decodes a push.
    pub fn from_push(push: Push) -> Self {
        #[derive(Deserialize)]
        struct Messages {
            messages: Vec<ReceivedMessage>,
        }
        #[derive(Deserialize)]
        struct Receipts {
            receipts: Vec<Receipt>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Presence {
            user_id: String,
        }
        #[derive(Deserialize)]
        struct Low {
            remaining: usize,
        }
        let data = push.data.get();
        let decoded = match push.event.as_str() {
            "message:receive" => {
                serde_json::from_str::<Messages>(data).ok().map(|m| Incoming::Messages(m.messages))
            }
            "message:delivered" => {
                serde_json::from_str::<Receipts>(data).ok().map(|r| Incoming::Delivered(r.receipts))
            }
            "user:joined" => {
                serde_json::from_str::<Presence>(data).ok().map(|p| Incoming::Joined(p.user_id))
            }
            "user:left" => {
                serde_json::from_str::<Presence>(data).ok().map(|p| Incoming::Left(p.user_id))
            }
            "prekeys:low" => {
                serde_json::from_str::<Low>(data).ok().map(|l| Incoming::PrekeysLow(l.remaining))
            }
            _ => None,
        };
        decoded.unwrap_or(Incoming::Other(push))
    }
}

/// A connection to the relay.
#[derive(Debug, Clone)]
pub struct RelayClient {
    /// The Socket.IO connection.
    io: SocketIoClient,
    /// The host this client connected to; login signatures are bound to it.
    host: String,
    /// How long to wait for answers.
    timeout: Duration,
}

/// Decodes `{"ok": true, …}` into `T`, or `{"ok": false, …}` into a refusal.
fn decode_answer<T: DeserializeOwned>(value: Value) -> Result<T, RelayError> {
    match value.get("ok") {
        Some(Value::Bool(true)) => {
            serde_json::from_value(value).map_err(|e| RelayError::Unexpected(e.to_string()))
        }
        Some(Value::Bool(false)) => Err(RelayError::Refused(
            serde_json::from_value(value).map_err(|e| RelayError::Unexpected(e.to_string()))?,
        )),
        _ => Err(RelayError::Unexpected(value.to_string())),
    }
}

impl RelayClient {
    /// Connects to `server` (`http://host:port`).
    pub async fn connect(
        server: &str,
        timeout: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Push>), RelayError> {
        let host = authority(server)?;
        let (io, pushes) = SocketIoClient::connect(server, timeout).await?;
        Ok((Self { io, host, timeout }, pushes))
    }

    /// The underlying Socket.IO connection.
    pub fn socket(&self) -> &SocketIoClient {
        &self.io
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.io.is_open()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.io.close();
    }

    /// Sends any request and decodes its answer.
    pub async fn call<Q: serde::Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        event: &str,
        request: &Q,
    ) -> Result<T, RelayError> {
        decode_answer(self.io.request(event, request, self.timeout).await?)
    }

    /// Asks for a login challenge.
    pub async fn challenge(&self) -> Result<ChallengeAnswer, RelayError> {
        self.call("auth:challenge", &serde_json::json!({})).await
    }

    /// Asks for a challenge and signs it for `user` (the `signature` of a login or a
    /// registration).
    pub async fn signed_challenge(
        &self,
        user: &UserId,
        identity: &IdentityKeyPair,
    ) -> Result<String, RelayError> {
        let challenge = self.challenge().await?;
        let nonce: [u8; 32] = wire::from_b64("nonce", &challenge.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| RelayError::Unexpected("challenge nonce is not 32 bytes".into()))?;
        let message = authentication_message(&self.host, user, &nonce)
            .map_err(|e| RelayError::Unexpected(e.to_string()))?;
        Ok(wire::b64(identity.sign(&message).as_bytes()))
    }

    /// Claims `user` with this identity and prekeys; the connection is then logged in.
    pub async fn register(
        &self,
        user: &UserId,
        identity: &IdentityKeyPair,
        signed_prekey: &SignedPrekeyPublic,
        one_time_prekeys: &[OneTimePrekeyPublic],
    ) -> Result<LoginAnswer, RelayError> {
        let signature = self.signed_challenge(user, identity).await?;
        let request = serde_json::json!({
            "userId": user.as_str(),
            "identity": PublicIdentityJson::from(identity.public()),
            "signedPrekey": SignedPrekeyJson::from(signed_prekey),
            "oneTimePrekeys": one_time_prekeys.iter().map(OneTimePrekeyJson::from).collect::<Vec<_>>(),
            "signature": signature,
        });
        self.call("user:register-key", &request).await
    }

    /// Logs in as `user`.
    pub async fn login(
        &self,
        user: &UserId,
        identity: &IdentityKeyPair,
    ) -> Result<LoginAnswer, RelayError> {
        let signature = self.signed_challenge(user, identity).await?;
        self.call(
            "auth:login",
            &serde_json::json!({ "userId": user.as_str(), "signature": signature }),
        )
        .await
    }

    /// Uploads prekeys (logged in).
    pub async fn upload_prekeys(
        &self,
        signed_prekey: Option<&SignedPrekeyPublic>,
        one_time_prekeys: &[OneTimePrekeyPublic],
    ) -> Result<UploadAnswer, RelayError> {
        let mut request = serde_json::json!({
            "oneTimePrekeys": one_time_prekeys.iter().map(OneTimePrekeyJson::from).collect::<Vec<_>>(),
        });
        if let Some(spk) = signed_prekey {
            request["signedPrekey"] = serde_json::to_value(SignedPrekeyJson::from(spk))
                .map_err(|e| RelayError::Unexpected(e.to_string()))?;
        }
        self.call("user:register-key", &request).await
    }

    /// Fetches `user`'s bundle and verifies it (signatures, and that it is for `user`).
    pub async fn request_bundle(&self, user: &UserId) -> Result<PrekeyBundle, RelayError> {
        #[derive(Deserialize)]
        struct Answer {
            bundle: BundleJson,
        }
        let answer: Answer =
            self.call("user:request-key", &serde_json::json!({ "userId": user.as_str() })).await?;
        let bundle = PrekeyBundle::try_from(&answer.bundle)
            .map_err(|e| RelayError::Unexpected(format!("invalid bundle: {e}")))?;
        if bundle.user_id() != user {
            return Err(RelayError::Unexpected("the relay sent someone else's bundle".into()));
        }
        Ok(bundle)
    }

    /// Looks up `user`'s current identity without consuming a prekey.
    pub async fn identity(&self, user: &str) -> Result<sotto_protocol::PublicIdentity, RelayError> {
        #[derive(Deserialize)]
        struct Answer {
            identity: PublicIdentityJson,
        }
        let answer: Answer =
            self.call("user:identity", &serde_json::json!({ "userId": user })).await?;
        sotto_protocol::PublicIdentity::try_from(&answer.identity)
            .map_err(|e| RelayError::Unexpected(format!("invalid identity: {e}")))
    }

    /// Sends an envelope to `to`, with the sender's id `client_id` for de-duplication.
    pub async fn send(
        &self,
        to: &UserId,
        client_id: &str,
        envelope: &Envelope,
    ) -> Result<SendAnswer, RelayError> {
        let raw = RawValue::from_string(envelope.to_json())
            .map_err(|e| RelayError::Unexpected(e.to_string()))?;
        self.send_raw(to.as_str(), client_id, &raw).await
    }

    /// Sends an envelope given as JSON text (benchmarks and tests).
    pub async fn send_raw(
        &self,
        to: &str,
        client_id: &str,
        envelope: &RawValue,
    ) -> Result<SendAnswer, RelayError> {
        #[derive(serde::Serialize)]
        struct Request<'a> {
            to: &'a str,
            id: &'a str,
            envelope: &'a RawValue,
        }
        self.call("message:send", &Request { to, id: client_id, envelope }).await
    }

    /// Acknowledges received messages (after they are saved).
    pub async fn ack(&self, ids: &[i64]) -> Result<(), RelayError> {
        let _: Value = self.call("message:ack", &serde_json::json!({ "ids": ids })).await?;
        Ok(())
    }

    /// Asks where messages this user sent stand: `pending`, `delivered` or `unknown`.
    pub async fn status(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, RelayError> {
        #[derive(Deserialize)]
        struct Entry {
            id: i64,
            status: String,
        }
        #[derive(Deserialize)]
        struct Answer {
            statuses: Vec<Entry>,
        }
        let answer: Answer =
            self.call("message:status", &serde_json::json!({ "ids": ids })).await?;
        Ok(answer.statuses.into_iter().map(|e| (e.id, e.status)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer from a relay older than `oneTimePrekeysFrom` and `oneTimePrekeysKept` says
    /// nothing about which keys it holds, which is not "none": taken as "none", every key of
    /// its users would be forgotten a month on while it still hands them out.
    #[test]
    fn answers_without_the_lowest_id_say_nothing_about_which_keys_are_held() {
        let old: LoginAnswer =
            serde_json::from_str(r#"{"ok":true,"userId":"bob","queued":0,"oneTimePrekeys":40}"#)
                .unwrap();
        assert_eq!(old.prekeys_held(), PrekeysHeld::Unknown);
        let empty: LoginAnswer = serde_json::from_str(
            r#"{"ok":true,"userId":"bob","queued":0,"oneTimePrekeys":0,"oneTimePrekeysFrom":null}"#,
        )
        .unwrap();
        assert_eq!(empty.prekeys_held(), PrekeysHeld::None);
        let held: LoginAnswer = serde_json::from_str(
            r#"{"ok":true,"userId":"bob","queued":0,"oneTimePrekeys":40,"oneTimePrekeysFrom":61}"#,
        )
        .unwrap();
        assert_eq!(held.prekeys_held(), PrekeysHeld::From(61));
        let upload: UploadAnswer =
            serde_json::from_str(r#"{"ok":true,"oneTimePrekeys":100}"#).unwrap();
        assert_eq!(
            (upload.prekeys_held(), upload.one_time_prekeys_kept),
            (PrekeysHeld::Unknown, None)
        );
    }

    /// serde quotes an unknown field's name as sent, and the answer types refuse unknown
    /// fields, so a relay picks that text: it must not reach the terminal as escapes.
    #[test]
    fn an_unexpected_answer_is_printable() {
        #[derive(Debug, Deserialize)]
        struct Answer {
            #[allow(dead_code)] // only decoded
            identity: PublicIdentityJson,
        }
        let evil = serde_json::json!({
            "ok": true,
            "identity": { "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}": 0 }
        });
        let error = decode_answer::<Answer>(evil).unwrap_err();
        assert!(matches!(error, RelayError::Unexpected(_)), "{error:?}");
        let shown = error.to_string();
        assert!(shown.contains("unknown field"), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{001b}]0;owned"), "{shown}");
    }

    #[test]
    fn waits_are_told_in_a_persons_units() {
        assert_eq!(wait_in_words(250), "250 ms");
        assert_eq!(wait_in_words(2_500), "3 s");
        assert_eq!(wait_in_words(600_000), "10 min");
    }
}
