//! Sotto's protocol core: P-256 X3DH, the Double Ratchet, typed plaintext records, safety
//! numbers and the JSON wire types, with no I/O.
//!
//! The core takes bytes and values and returns bytes and values. Sockets, clocks, storage and
//! randomness come from the caller: every function that needs randomness takes a
//! [`rand_core::CryptoRng`], every function that needs the time takes it as an argument. That
//! makes every test exact and replayable, and lets the same code serve the relay, the terminal
//! client and the test-vector generator.
//!
//! The construction is written down in `docs/PROTOCOL.md`; section numbers in the module docs
//! refer to it.
//!
//! # Layout
//!
//! | concept                                   | module                              |
//! |-------------------------------------------|-------------------------------------|
//! | P-256 keys, ECDH, ECDSA, encodings        | [`keys`]                            |
//! | identity keys (`IKs` + `IKd`)             | [`identity`]                        |
//! | signed and one-time prekeys, bundles      | [`prekeys`]                         |
//! | domain-separated signed messages          | [`signing`]                         |
//! | user ids                                  | [`user_id`]                         |
//! | X3DH                                      | [`x3dh`]                            |
//! | HKDF / HMAC / AES-GCM steps               | [`kdf`], [`aead`]                   |
//! | Double Ratchet                            | [`ratchet`]                         |
//! | a peer's sessions, prekey-message routing | [`session`]                         |
//! | plaintext records and padding             | [`record`]                          |
//! | safety numbers                            | [`safety_number`]                   |
//! | JSON wire types                           | [`wire`]                            |
//! | store traits and in-memory stores         | [`store`]                           |
//! | shared test vectors                       | [`vectors`]                         |
//! | fuzz entry points (also replayed in tests)| [`fuzzing`]                         |
//!
//! # Secrets
//!
//! Secret material lives in types that zeroise on drop and have hand-written `Debug`
//! implementations that print public parts only (pinned by a snapshot test). Decryption always
//! works on a copy of the session and commits only after the AEAD tag and the record check out,
//! so a failed decryption leaves the stored session byte-identical.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod aead;
pub mod fuzzing;
pub mod identity;
pub mod kdf;
pub mod keys;
pub mod prekeys;
pub mod ratchet;
pub mod record;
pub mod safety_number;
pub mod session;
pub mod signing;
pub mod store;
pub mod user_id;
pub mod vectors;
pub mod wire;
pub mod x3dh;

pub use identity::{IdentityKeyPair, PublicIdentity};
pub use keys::{DhKeyPair, DhPublicKey, DhSecretKey, KeyError, Signature, VerifyingKey};
pub use prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey, SignedPrekeyPublic};
pub use record::{Receipt, ReceiptKind, Record, RecordBody, RecordError};
pub use safety_number::SafetyNumber;
pub use session::{DecryptError, Decrypted, EncryptError, SessionRecord};
pub use user_id::{UserId, UserIdError};
pub use wire::{DecodeError, Envelope};

/// The wire format version carried in every bundle and envelope (§1).
pub const PROTOCOL_VERSION: u8 = 1;

/// The cipher suite carried in every bundle and envelope (§1): P-256 ECDH and ECDSA,
/// HKDF-SHA256, HMAC-SHA256, AES-256-GCM, SHA-512 for safety numbers.
pub const SUITE_P256: u8 = 1;
