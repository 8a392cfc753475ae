//! Safety numbers (§9): what two people compare to know that no one sits between them.
//!
//! ```text
//! h_0     = version (u16 = 1) ‖ IKs ‖ IKd ‖ user id
//! h_(i+1) = SHA-512(h_i ‖ IKs ‖ IKd), 5,200 times
//! digits  = 6 × (5-byte chunk as u40 mod 100,000, 5 digits)  → 30 per user
//! number  = the two 30-digit halves sorted and joined        → 60 digits
//! QR      = 0x01 ‖ fingerprint[..32] of the lower half ‖ fingerprint[..32] of the higher half
//! ```
//!
//! This is Signal's numeric fingerprint, with both identity keys of a Sotto identity hashed
//! together as the "public key".

use core::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::identity::PublicIdentity;
use crate::user_id::UserId;

/// Version hashed into every fingerprint.
pub const FINGERPRINT_VERSION: u16 = 1;
/// SHA-512 iterations per fingerprint.
pub const ITERATIONS: usize = 5_200;
/// Version byte of the QR payload.
pub const QR_VERSION: u8 = 1;
/// Length of the QR payload.
pub const QR_LEN: usize = 1 + 32 + 32;

/// One user's 64-byte fingerprint.
pub fn fingerprint(user: &UserId, identity: &PublicIdentity) -> [u8; 64] {
    let signing = identity.signing_key().as_bytes();
    let dh = identity.dh_key().as_bytes();
    let mut hasher = Sha512::new();
    hasher.update(FINGERPRINT_VERSION.to_be_bytes());
    hasher.update(signing);
    hasher.update(dh);
    hasher.update(user.as_str().as_bytes());
    hasher.update(signing);
    hasher.update(dh);
    let mut hash: [u8; 64] = hasher.finalize().into();
    for _ in 1..ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(signing);
        hasher.update(dh);
        hash = hasher.finalize().into();
    }
    hash
}

/// The 30 digits of one fingerprint.
pub fn digits(fingerprint: &[u8; 64]) -> String {
    let mut out = String::with_capacity(30);
    for chunk in fingerprint[..30].chunks_exact(5) {
        let value = chunk.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

/// The safety number of a conversation.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// 60 digits.
    digits: String,
    /// The QR payload.
    qr: [u8; QR_LEN],
}

impl SafetyNumber {
    /// Computes the number for two users. The order of the arguments does not matter: both
    /// people get the same number.
    pub fn compute(
        user_a: &UserId,
        identity_a: &PublicIdentity,
        user_b: &UserId,
        identity_b: &PublicIdentity,
    ) -> Self {
        let a = fingerprint(user_a, identity_a);
        let b = fingerprint(user_b, identity_b);
        let (digits_a, digits_b) = (digits(&a), digits(&b));
        let ((low_digits, low), (high_digits, high)) = if digits_a <= digits_b {
            ((digits_a, a), (digits_b, b))
        } else {
            ((digits_b, b), (digits_a, a))
        };
        let mut qr = [0u8; QR_LEN];
        qr[0] = QR_VERSION;
        qr[1..33].copy_from_slice(&low[..32]);
        qr[33..].copy_from_slice(&high[..32]);
        Self { digits: low_digits + &high_digits, qr }
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The 60 digits in 12 groups of 5, separated by spaces.
    pub fn grouped(&self) -> String {
        self.groups().collect::<Vec<_>>().join(" ")
    }

    /// The 12 groups of 5 digits.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        (0..12).map(|i| &self.digits[5 * i..5 * i + 5])
    }

    /// The bytes a QR code carries.
    pub fn qr_payload(&self) -> &[u8; QR_LEN] {
        &self.qr
    }

    /// Whether a scanned QR payload matches, compared in constant time.
    pub fn matches_qr(&self, scanned: &[u8]) -> bool {
        scanned.len() == QR_LEN && bool::from(self.qr.ct_eq(scanned))
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.grouped())
    }
}
