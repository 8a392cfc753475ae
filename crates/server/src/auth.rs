//! Authentication: single-use login challenges bound to the host and the user id, and the
//! checks a registration must pass before a user id is claimed.
//!
//! A connection asks for a challenge (`auth:challenge`), signs
//! `"Sotto v1 authentication" ‖ 0x00 ‖ host ‖ user id ‖ nonce` with its identity signing key
//! and presents the signature (`auth:login`, or inside a registration). The challenge is taken
//! from the connection by the first attempt, so it can never be used twice; it expires after
//! `challenge_ttl`; and it binds the host the client connected to, so a signature obtained by
//! one relay is useless at another.

use std::time::Instant;

use rand::Rng;
use sotto_protocol::UserId;
use sotto_protocol::identity::PublicIdentity;
use sotto_protocol::keys::{Signature, VerifyingKey};
use sotto_protocol::prekeys::OneTimePrekeyPublic;
use sotto_protocol::signing::authentication_message;
use sotto_protocol::wire::{self, OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson};

use crate::config::Limits;
use crate::events::{ErrorCode, Failure};
use crate::state::Challenge;
use crate::storage::{StoredIdentity, StoredOneTimePrekey, StoredSignedPrekey};

/// A fresh challenge.
pub(crate) fn new_challenge(limits: &Limits, now: Instant) -> Challenge {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    Challenge { nonce, expires: now + limits.challenge_ttl }
}

/// Why a login or registration signature was refused; the text is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No challenge was asked for (or it was already used).
    NoChallenge,
    /// The challenge expired.
    Expired,
    /// Not a valid signature by this identity over this challenge.
    BadSignature,
    /// No such user.
    UnknownUser,
}

impl AuthFailure {
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthFailure::NoChallenge => "no_challenge",
            AuthFailure::Expired => "expired",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::UnknownUser => "unknown_user",
        }
    }

    pub(crate) fn failure(self) -> Failure {
        match self {
            AuthFailure::NoChallenge => {
                Failure::new(ErrorCode::NoChallenge, "ask for a challenge (auth:challenge) first")
            }
            AuthFailure::Expired => Failure::new(
                ErrorCode::ChallengeExpired,
                "the challenge expired; ask for a new one",
            ),
            // One answer for both, so the login does not reveal which ids exist.
            AuthFailure::BadSignature | AuthFailure::UnknownUser => {
                Failure::new(ErrorCode::AuthenticationFailed, "authentication failed")
            }
        }
    }
}

/// Checks a challenge signature.
pub(crate) fn verify_challenge(
    challenge: Option<Challenge>,
    host: &str,
    user: &UserId,
    signing_key: &VerifyingKey,
    signature_b64: &str,
    now: Instant,
) -> Result<(), AuthFailure> {
    let challenge = challenge.ok_or(AuthFailure::NoChallenge)?;
    if now >= challenge.expires {
        return Err(AuthFailure::Expired);
    }
    let signature = wire::from_b64("signature", signature_b64)
        .ok()
        .and_then(|bytes| Signature::from_bytes(&bytes).ok())
        .ok_or(AuthFailure::BadSignature)?;
    let message = authentication_message(host, user, &challenge.nonce)
        .map_err(|_| AuthFailure::BadSignature)?;
    signing_key.verify(&message, &signature).map_err(|_| AuthFailure::BadSignature)
}

/// Decodes a stored identity's signing key.
pub(crate) fn stored_signing_key(identity: &StoredIdentity) -> Option<VerifyingKey> {
    let bytes = wire::from_b64("identity.signing", &identity.signing).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Decodes a stored identity.
pub(crate) fn stored_identity(identity: &StoredIdentity) -> Option<PublicIdentity> {
    PublicIdentity::try_from(&PublicIdentityJson {
        signing: identity.signing.clone(),
        dh: identity.dh.clone(),
        signature: identity.signature.clone(),
    })
    .ok()
}

fn invalid_keys(what: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorCode::InvalidKeys, format!("{what}"))
}

/// Verifies an identity (its binding signature) and returns it with its stored form.
pub(crate) fn check_identity(
    json: &PublicIdentityJson,
) -> Result<(PublicIdentity, StoredIdentity), Failure> {
    let identity = PublicIdentity::try_from(json).map_err(invalid_keys)?;
    let stored = StoredIdentity {
        signing: json.signing.clone(),
        dh: json.dh.clone(),
        signature: json.signature.clone(),
    };
    Ok((identity, stored))
}

/// Verifies a signed prekey against its owner's identity.
pub(crate) fn check_signed_prekey(
    json: &SignedPrekeyJson,
    owner: &PublicIdentity,
) -> Result<StoredSignedPrekey, Failure> {
    let spk = json.decode(owner).map_err(invalid_keys)?;
    Ok(StoredSignedPrekey {
        id: spk.id,
        key: json.key.clone(),
        created_at: spk.created_at,
        signature: json.signature.clone(),
    })
}

/// Validates a batch of one-time prekeys: a cap, valid points, distinct ids.
pub(crate) fn check_one_time_prekeys(
    keys: &[OneTimePrekeyJson],
    limits: &Limits,
) -> Result<Vec<StoredOneTimePrekey>, Failure> {
    if keys.len() > limits.max_prekeys_per_upload {
        return Err(Failure::new(
            ErrorCode::TooManyPrekeys,
            format!("at most {} one-time prekeys per upload", limits.max_prekeys_per_upload),
        ));
    }
    let mut ids = std::collections::HashSet::with_capacity(keys.len());
    keys.iter()
        .map(|json| {
            let key: OneTimePrekeyPublic = json.try_into().map_err(invalid_keys)?;
            if !ids.insert(key.id) {
                return Err(invalid_keys(format!("one-time prekey id {} appears twice", key.id)));
            }
            Ok(StoredOneTimePrekey { id: key.id, key: json.key.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::IdentityKeyPair;
    use std::time::Duration;

    #[test]
    fn challenges_are_single_use_bound_and_expire() {
        let mut rng = rand::rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let user = UserId::parse("alice").unwrap();
        let limits = Limits::default();
        let now = Instant::now();
        let challenge = new_challenge(&limits, now);
        let sign = |host: &str, user: &UserId, challenge: &Challenge| {
            let message = authentication_message(host, user, &challenge.nonce).unwrap();
            wire::b64(identity.sign(&message).as_bytes())
        };
        let key = identity.public().signing_key();
        let good = sign("relay:3000", &user, &challenge);
        assert_eq!(
            verify_challenge(Some(challenge.clone()), "relay:3000", &user, key, &good, now),
            Ok(())
        );
        assert_eq!(
            verify_challenge(None, "relay:3000", &user, key, &good, now),
            Err(AuthFailure::NoChallenge)
        );
        assert_eq!(
            verify_challenge(Some(challenge.clone()), "other:3000", &user, key, &good, now),
            Err(AuthFailure::BadSignature),
            "bound to the host"
        );
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(
            verify_challenge(Some(challenge.clone()), "relay:3000", &bob, key, &good, now),
            Err(AuthFailure::BadSignature),
            "bound to the user id"
        );
        let later = now + limits.challenge_ttl + Duration::from_millis(1);
        assert_eq!(
            verify_challenge(Some(challenge.clone()), "relay:3000", &user, key, &good, later),
            Err(AuthFailure::Expired)
        );
        let other = IdentityKeyPair::generate(&mut rng);
        assert_eq!(
            verify_challenge(
                Some(challenge),
                "relay:3000",
                &user,
                other.public().signing_key(),
                &good,
                now
            ),
            Err(AuthFailure::BadSignature),
            "wrong key"
        );
    }
}
