//! Entry points for the fuzz targets (`fuzz/fuzz_targets/server_events.rs`) and for replaying
//! their corpus in `cargo test`: every decoder the relay runs on a client's event payload, in
//! the order the handlers run them, without a socket or a database. None of them may panic,
//! whatever the bytes.

use serde_json::Value;

use crate::config::Limits;
use crate::events::{IdsRequest, LoginRequest, RegisterRequest, RequestKeyRequest, SendRequest};
use crate::{auth, handlers};

/// The first byte picks the event, the rest is its payload as JSON text (decoded as
/// socketioxide does: into a `Value` first, then into the request type).
pub fn event(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(payload) else { return };
    let Ok(value) = serde_json::from_str::<Value>(text) else { return };
    let limits = Limits::default();
    match selector % 5 {
        0 => {
            if let Ok(request) = serde_json::from_value::<LoginRequest>(value) {
                let _ = handlers::parse_user_id(&request.user_id);
                let _ = sotto_protocol::wire::from_b64("signature", &request.signature);
            }
        }
        1 => {
            if let Ok(request) = serde_json::from_value::<RegisterRequest>(value) {
                register(&request, &limits);
            }
        }
        2 => {
            if let Ok(request) = serde_json::from_value::<RequestKeyRequest>(value) {
                let _ = handlers::parse_user_id(&request.user_id);
            }
        }
        3 => {
            if let Ok(request) = serde_json::from_value::<SendRequest>(value) {
                let _ = handlers::check_send(&request, &limits);
            }
        }
        _ => {
            if let Ok(request) = serde_json::from_value::<IdsRequest>(value) {
                let _ = request.ids.len() <= limits.max_ids_per_request;
            }
        }
    }
}

fn register(request: &RegisterRequest, limits: &Limits) {
    if let Some(user) = &request.user_id {
        let _ = handlers::parse_user_id(user);
    }
    let identity = request.identity.as_ref().and_then(|json| auth::check_identity(json).ok());
    if let (Some((identity, _)), Some(spk)) = (&identity, &request.signed_prekey) {
        let _ = auth::check_signed_prekey(spk, identity);
    }
    let _ = auth::check_one_time_prekeys(
        request.one_time_prekeys.as_deref().unwrap_or_default(),
        limits,
    );
    if let Some(signature) = &request.signature {
        let _ = sotto_protocol::wire::from_b64("signature", signature);
    }
    // What the relay stores is what it later decodes: a stored identity must decode again.
    if let Some((_, stored)) = identity {
        assert!(auth::stored_identity(&stored).is_some(), "a checked identity decodes again");
    }
}
