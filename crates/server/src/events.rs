//! Socket.IO event names and payloads (docs/PROTOCOL.md, Part 2), and the relay's error codes.
//!
//! Requests are decoded strictly (unknown fields refused) into these types; every answer is one
//! JSON object, `{"ok": true, …}` or `{"ok": false, "error": CODE, "message": TEXT, …}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sotto_protocol::wire::{OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson};

/// Client → relay: a login challenge, please.
pub const AUTH_CHALLENGE: &str = "auth:challenge";
/// Client → relay: log in with a signed challenge.
pub const AUTH_LOGIN: &str = "auth:login";
/// Client → relay: claim a user id, or (logged in) upload prekeys.
pub const REGISTER_KEY: &str = "user:register-key";
/// Client → relay: fetch a user's bundle.
pub const REQUEST_KEY: &str = "user:request-key";
/// Client → relay: a user's current identity (no prekey is consumed).
pub const IDENTITY: &str = "user:identity";
/// Relay → client: the bundle asked for (also the answer of `user:request-key`).
pub const PUBLIC_KEY: &str = "user:public-key";
/// Client → relay: queue a message.
pub const MESSAGE_SEND: &str = "message:send";
/// Relay → client: queued messages.
pub const MESSAGE_RECEIVE: &str = "message:receive";
/// Client → relay: these messages are saved; delete them.
pub const MESSAGE_ACK: &str = "message:ack";
/// Relay → client: messages you sent were acknowledged by their recipient.
pub const MESSAGE_DELIVERED: &str = "message:delivered";
/// Client → relay: where do messages I sent stand?
pub const MESSAGE_STATUS: &str = "message:status";
/// Relay → client: a contact came online.
pub const USER_JOINED: &str = "user:joined";
/// Relay → client: a contact went offline.
pub const USER_LEFT: &str = "user:left";
/// Relay → client: your one-time prekeys are running low.
pub const PREKEYS_LOW: &str = "prekeys:low";

/// Stable error codes a client can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is malformed; the message says which part.
    BadRequest,
    /// Log in (or register) first.
    Unauthenticated,
    /// This socket is already logged in.
    AlreadyAuthenticated,
    /// The user id is not valid.
    InvalidUserId,
    /// The user id is taken.
    UserTaken,
    /// No such user.
    UnknownUser,
    /// Ask for a challenge first.
    NoChallenge,
    /// The challenge expired; ask for a new one.
    ChallengeExpired,
    /// The signature did not verify.
    AuthenticationFailed,
    /// Keys or signatures in the payload are invalid.
    InvalidKeys,
    /// More prekeys than allowed.
    TooManyPrekeys,
    /// The payload is larger than allowed.
    TooLarge,
    /// Too many requests; retry after `retryAfterMs`.
    RateLimited,
    /// The recipient's queue is full.
    QueueFull,
    /// The user already holds as many logged-in connections to this relay as it allows; one
    /// must close first.
    TooManyConnections,
    /// The relay is overloaded; retry shortly.
    Busy,
    /// The database is unavailable; retry shortly. Nothing was stored.
    StorageUnavailable,
}

impl ErrorCode {
    /// Whether retrying the same request later can succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Busy | ErrorCode::StorageUnavailable)
    }

    /// The code's text, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::InvalidUserId => "invalid_user_id",
            ErrorCode::UserTaken => "user_taken",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::NoChallenge => "no_challenge",
            ErrorCode::ChallengeExpired => "challenge_expired",
            ErrorCode::AuthenticationFailed => "authentication_failed",
            ErrorCode::InvalidKeys => "invalid_keys",
            ErrorCode::TooManyPrekeys => "too_many_prekeys",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Busy => "busy",
            ErrorCode::StorageUnavailable => "storage_unavailable",
        }
    }
}

/// A refused request: code, human-readable message, and for rate limits when to retry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Always false.
    pub ok: bool,
    /// The stable code.
    pub error: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// For rate limits: how long to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    /// A failure with a message.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error,
            message: message.into(),
            retryable: error.retryable(),
            retry_after_ms: None,
        }
    }

    /// The relay is overloaded: the writer's inbox is full or the message waited too long.
    pub fn busy() -> Self {
        Self::new(ErrorCode::Busy, "the relay is busy; retry shortly")
    }

    /// A rate-limit failure.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(ErrorCode::RateLimited, "too many requests; slow down")
        }
    }
}

/// `{"ok": true}` with nothing else.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

impl Done {
    /// The plain success answer.
    pub const OK: Done = Done { ok: true };
}

// ---- requests ------------------------------------------------------------------------------

/// `auth:login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginRequest {
    /// Who is logging in.
    pub user_id: String,
    /// `IKs`'s signature over the challenge (§4.1), base64url.
    pub signature: String,
}

/// `user:register-key`: a registration (not logged in) or a prekey upload (logged in).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The id to claim (registration only).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The identity (registration only).
    #[serde(default)]
    pub identity: Option<PublicIdentityJson>,
    /// A signed prekey (required to register; optional when uploading).
    #[serde(default)]
    pub signed_prekey: Option<SignedPrekeyJson>,
    /// One-time prekeys.
    #[serde(default)]
    pub one_time_prekeys: Option<Vec<OneTimePrekeyJson>>,
    /// `IKs`'s signature over the challenge (registration only).
    #[serde(default)]
    pub signature: Option<String>,
}

/// `user:request-key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestKeyRequest {
    /// Whose bundle.
    pub user_id: String,
}

/// `message:send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The recipient.
    pub to: String,
    /// The sender's id for this message (1 to 64 characters of base64url); a resend with the
    /// same id is stored once.
    pub id: String,
    /// The envelope (§8.5), checked and forwarded as is.
    pub envelope: Box<RawValue>,
}

/// `message:ack` and `message:status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdsRequest {
    /// Message ids.
    pub ids: Vec<i64>,
}

// ---- answers and pushes --------------------------------------------------------------------

/// Answer of `auth:challenge`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeAnswer {
    /// Always true.
    pub ok: bool,
    /// 32 random bytes, base64url.
    pub nonce: String,
    /// The host the relay saw; the client signs the host it connected to.
    pub host: String,
    /// When the challenge stops being accepted, Unix milliseconds.
    pub expires_at: i64,
}

/// Answer of `auth:login` and of a registration.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginAnswer {
    /// Always true.
    pub ok: bool,
    /// The normalised user id now bound to the socket.
    pub user_id: String,
    /// Messages waiting; they follow as `message:receive`.
    pub queued: usize,
    /// One-time prekeys the relay holds for this user.
    pub one_time_prekeys: usize,
    /// The lowest id among them (null when none are left): every lower one was handed out.
    pub one_time_prekeys_from: Option<u32>,
}

/// Answer of a prekey upload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadAnswer {
    /// Always true.
    pub ok: bool,
    /// One-time prekeys the relay now holds for this user.
    pub one_time_prekeys: usize,
    /// The lowest id among them (null when none are left): every lower one was handed out.
    pub one_time_prekeys_from: Option<u32>,
    /// How many of this upload's one-time prekeys, from its start, were kept; the rest were
    /// over the relay's cap and will never be handed out.
    pub one_time_prekeys_kept: usize,
}

/// Answer of `user:request-key`, and the `user:public-key` push.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleAnswer {
    /// Always true.
    pub ok: bool,
    /// Whose bundle.
    pub user_id: String,
    /// The bundle (§8.2).
    pub bundle: sotto_protocol::wire::BundleJson,
}

/// Answer of `user:identity`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityAnswer {
    /// Always true.
    pub ok: bool,
    /// Whose identity.
    pub user_id: String,
    /// The identity (§8.1).
    pub identity: sotto_protocol::wire::PublicIdentityJson,
}

/// Answer of `message:send`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendAnswer {
    /// Always true.
    pub ok: bool,
    /// The relay's id for the message.
    pub id: i64,
    /// Whether this was a resend of a message already stored.
    pub duplicate: bool,
}

/// One message in a `message:receive` push.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage<'a> {
    /// The relay's id; acknowledge with it.
    pub id: i64,
    /// The authenticated sender.
    pub from: &'a str,
    /// When the relay received it, Unix milliseconds.
    pub received_at: i64,
    /// The envelope, as sent.
    pub envelope: &'a RawValue,
}

/// `message:receive`.
#[derive(Debug, Serialize)]
pub struct ReceivePush<'a> {
    /// Oldest first.
    pub messages: Vec<ReceivedMessage<'a>>,
}

/// One receipt in `message:delivered`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt<'a> {
    /// The relay's id of the message.
    pub id: i64,
    /// The sender's own id of it.
    pub client_id: &'a str,
    /// Who acknowledged it.
    pub to: &'a str,
}

/// `message:delivered`.
#[derive(Debug, Serialize)]
pub struct DeliveredPush<'a> {
    /// The receipts.
    pub receipts: Vec<Receipt<'a>>,
}

/// One entry of the `message:status` answer.
#[derive(Debug, Serialize)]
pub struct StatusEntry {
    /// The relay's id.
    pub id: i64,
    /// `pending`, `delivered` or `unknown`.
    pub status: &'static str,
}

/// Answer of `message:status`.
#[derive(Debug, Serialize)]
pub struct StatusAnswer {
    /// Always true.
    pub ok: bool,
    /// One entry per id asked about.
    pub statuses: Vec<StatusEntry>,
}

/// `user:joined` / `user:left`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresencePush<'a> {
    /// Who.
    pub user_id: &'a str,
}

/// `prekeys:low`.
#[derive(Debug, Serialize)]
pub struct PrekeysLowPush {
    /// How many one-time prekeys are left.
    pub remaining: usize,
}

// ---- envelope check --------------------------------------------------------------------------

/// Length of base64url (unpadded) text for 65 bytes.
const KEY_B64_LEN: usize = 87;
/// Length of base64url text for 64 bytes.
const SIGNATURE_B64_LEN: usize = 86;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderShape<'a> {
    dh: &'a str,
    #[allow(dead_code)]
    pn: u32,
    #[allow(dead_code)]
    n: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityShape<'a> {
    signing: &'a str,
    dh: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrekeyShape<'a> {
    #[serde(borrow)]
    identity: IdentityShape<'a>,
    base_key: &'a str,
    #[allow(dead_code)]
    signed_prekey_id: u32,
    #[allow(dead_code)]
    #[serde(default)]
    one_time_prekey_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeShape<'a> {
    version: u64,
    suite: u64,
    #[serde(borrow)]
    header: HeaderShape<'a>,
    #[serde(borrow, default)]
    prekey: Option<PrekeyShape<'a>>,
    ciphertext: &'a str,
}

fn is_b64url(text: &str) -> bool {
    // A table lookup folded without an early exit: the loop has no branches, so the compiler
    // vectorises it (the ciphertext check was 3.5% of the relay's CPU at saturation with a
    // per-byte branching test).
    text.bytes().fold(true, |valid, b| valid & B64URL[usize::from(b)])
}

/// Which bytes the base64url alphabet holds.
static B64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

fn b64_field(text: &str, len: usize, field: &str) -> Result<(), String> {
    if text.len() == len && is_b64url(text) {
        Ok(())
    } else {
        Err(format!("envelope {field} is not {len} characters of base64url"))
    }
}

/// Checks an envelope's structure without decoding keys or ciphertext: the relay never needs
/// their bytes, only the assurance that what it stores and forwards has the documented shape
/// (version, suite, every field present and of the right length). The recipient decodes it
/// strictly.
pub fn check_envelope(raw: &RawValue) -> Result<(), String> {
    let shape: EnvelopeShape<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("envelope: {e}"))?;
    if shape.version != u64::from(sotto_protocol::PROTOCOL_VERSION) {
        return Err(format!("unsupported envelope version {}", shape.version));
    }
    if shape.suite != u64::from(sotto_protocol::SUITE_P256) {
        return Err(format!("unsupported cipher suite {}", shape.suite));
    }
    b64_field(shape.header.dh, KEY_B64_LEN, "header.dh")?;
    if let Some(prekey) = &shape.prekey {
        b64_field(prekey.identity.signing, KEY_B64_LEN, "prekey.identity.signing")?;
        b64_field(prekey.identity.dh, KEY_B64_LEN, "prekey.identity.dh")?;
        b64_field(prekey.identity.signature, SIGNATURE_B64_LEN, "prekey.identity.signature")?;
        b64_field(prekey.base_key, KEY_B64_LEN, "prekey.baseKey")?;
    }
    let text = shape.ciphertext;
    let valid = decoded_len(text.len())
        .is_some_and(|bytes| sotto_protocol::wire::check_ciphertext_len(bytes).is_ok());
    if !valid || !is_b64url(text) {
        return Err("envelope ciphertext has an invalid length or encoding".to_owned());
    }
    Ok(())
}

/// How many bytes unpadded base64 text of this length decodes to (none for impossible lengths).
fn decoded_len(text_len: usize) -> Option<usize> {
    let whole = text_len / 4 * 3;
    match text_len % 4 {
        0 => Some(whole),
        2 => Some(whole + 1),
        3 => Some(whole + 2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn accepts_the_vector_envelopes_and_refuses_the_invalid_ones() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../test-vectors/wire.json")).unwrap();
        for case in vectors["envelopes"].as_array().unwrap() {
            let text = case["json"].as_str().unwrap();
            assert_eq!(check_envelope(&raw(text)), Ok(()), "{}", case["name"]);
        }
        // Structural refusals the relay can see without decoding keys.
        for case in vectors["invalid"].as_array().unwrap() {
            if case["kind"] != "envelope" {
                continue;
            }
            let name = case["name"].as_str().unwrap();
            let structural =
                !matches!(name, "dh-off-curve" | "prekey-identity-swapped-dh" | "dh-padded-base64");
            let Ok(value) = RawValue::from_string(case["json"].as_str().unwrap().to_owned()) else {
                continue;
            };
            if structural {
                assert!(check_envelope(&value).is_err(), "{name} must be refused");
            }
        }
    }

    #[test]
    fn ciphertext_length_must_be_a_bucket_plus_tag() {
        let good = sotto_protocol::wire::b64(&[0u8; 80]);
        let bad = sotto_protocol::wire::b64(&[0u8; 81]);
        let dh = sotto_protocol::wire::b64(&[4u8; 65]);
        let envelope = |ct: &str| {
            raw(&format!(
                r#"{{"version":1,"suite":1,"header":{{"dh":"{dh}","pn":0,"n":0}},"ciphertext":"{ct}"}}"#
            ))
        };
        assert_eq!(check_envelope(&envelope(&good)), Ok(()));
        assert!(check_envelope(&envelope(&bad)).is_err());
        assert!(check_envelope(&envelope(&format!("{good}A"))).is_err());
        assert!(check_envelope(&envelope("")).is_err());
    }
}
