//! The generator of the shared test vectors in `test-vectors/` (§11).
//!
//! Everything is drawn from one ChaCha20 stream seeded from a fixed label, so the files are the
//! same on every run and every machine. `cargo run -p sotto-protocol --example gen-vectors`
//! writes them; `tests/vectors.rs` fails when the committed files differ from [`generate`]'s
//! output. The browser client's tests read the same files.
//!
//! Binary values are lower-case hex unless a field name ends in `B64` (base64url) or `Json` (an
//! exact JSON text). Private keys come with a JWK so Web Crypto can import them.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::aead;
use crate::identity::IdentityKeyPair;
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::keys::{DhKeyPair, DhPublicKey, DhSecretKey, SigningKey};
use crate::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::ratchet::{Header, message_associated_data};
use crate::record::{self, MessageDigest, Receipt, ReceiptKind, Record, RecordBody};
use crate::safety_number::{self, SafetyNumber};
use crate::session::{DecryptError, LocalParty, PrekeyLookup, Session, SessionRecord};
use crate::signing;
use crate::user_id::UserId;
use crate::wire::{Envelope, b64};
use crate::x3dh::{self, InitiatorKeys};

/// The label the seed is hashed from.
pub const SEED_LABEL: &str = "Sotto v1 test vectors";
/// Version of the vector file format.
pub const FORMAT_VERSION: u32 = 1;

/// The deterministic generator every vector draws from.
pub fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed(Sha256::digest(SEED_LABEL.as_bytes()).into())
}

/// Generates every vector file: `(file name, contents)`.
pub fn generate() -> Vec<(&'static str, String)> {
    let mut rng = rng();
    let files = vec![
        ("keys.json", keys(&mut rng)),
        ("ecdh.json", ecdh(&mut rng)),
        ("signatures.json", signatures(&mut rng)),
        ("kdf.json", kdf(&mut rng)),
        ("x3dh.json", x3dh_vectors(&mut rng)),
        ("aead.json", aead_vectors(&mut rng)),
        ("records.json", records()),
        ("wire.json", wire(&mut rng)),
        ("ratchet.json", ratchet(&mut rng)),
        ("safety-number.json", safety_numbers(&mut rng)),
    ];
    files
        .into_iter()
        .map(|(name, value)| {
            let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
            text.push('\n');
            (name, text)
        })
        .collect()
}

fn file(description: &str, body: Value) -> Value {
    let mut value = json!({ "description": description, "version": FORMAT_VERSION });
    if let (Value::Object(out), Value::Object(body)) = (&mut value, body) {
        out.extend(body);
    }
    value
}

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn key_json(secret: &[u8], public: &[u8]) -> Value {
    json!({
        "private": h(secret),
        "public": h(public),
        "publicB64": b64(public),
        "jwk": {
            "kty": "EC",
            "crv": "P-256",
            "x": b64(&public[1..33]),
            "y": b64(&public[33..65]),
            "d": b64(secret),
        },
    })
}

fn dh_pair_json(pair: &DhKeyPair) -> Value {
    key_json(&*pair.secret().to_bytes(), pair.public().as_bytes())
}

fn signing_json(key: &SigningKey) -> Value {
    key_json(&*key.to_bytes(), key.verifying_key().as_bytes())
}

fn user(id: &str) -> UserId {
    // The ids below are valid literals.
    UserId::parse(id).unwrap_or_else(|_| unreachable_user())
}

#[allow(clippy::panic)]
fn unreachable_user() -> UserId {
    panic!("vector user ids are valid")
}

fn identity_json(identity: &IdentityKeyPair) -> Value {
    json!({
        "signing": signing_json(identity.signing_key()),
        "dh": dh_pair_json(identity.dh_key_pair()),
        "bindingSignature": h(identity.public().signature().as_bytes()),
    })
}

fn signed_prekey_json(spk: &SignedPrekey) -> Value {
    json!({
        "id": spk.id(),
        "createdAt": spk.public().created_at,
        "key": dh_pair_json(spk.key_pair()),
        "signature": h(spk.public().signature.as_bytes()),
    })
}

fn one_time_prekey_json(opk: &OneTimePrekey) -> Value {
    json!({ "id": opk.id(), "key": dh_pair_json(opk.key_pair()) })
}

// ---- keys.json -------------------------------------------------------------------------------

const FIELD_PRIME: &str = "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff";

fn keys(rng: &mut ChaCha20Rng) -> Value {
    let valid: Vec<Value> = (0..4)
        .map(|i| {
            let pair = DhKeyPair::generate(rng);
            let mut value = dh_pair_json(&pair);
            value["name"] = json!(format!("key-{i}"));
            value
        })
        .collect();
    let sample = DhKeyPair::generate(rng);
    let good = *sample.public().as_bytes();
    let mut compressed = vec![0x02 | (good[64] & 1)];
    compressed.extend_from_slice(&good[1..33]);
    let mut bad_prefix = good;
    bad_prefix[0] = 0x05;
    let mut off_curve = good;
    off_curve[64] ^= 0x01;
    let mut x_is_p = vec![0x04];
    x_is_p.extend_from_slice(&hex::decode(FIELD_PRIME).unwrap_or_default());
    x_is_p.extend_from_slice(&good[33..]);
    let mut zero = vec![0x04];
    zero.extend_from_slice(&[0u8; 64]);
    let invalid: Vec<Value> = [
        ("empty", Vec::new()),
        ("point-at-infinity", vec![0x00]),
        ("compressed", compressed),
        ("truncated", good[..64].to_vec()),
        ("too-long", [&good[..], &[0u8]].concat()),
        ("bad-prefix", bad_prefix.to_vec()),
        ("not-on-curve", off_curve.to_vec()),
        ("x-equals-field-prime", x_is_p),
        ("all-zero-coordinates", zero),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        debug_assert!(DhPublicKey::from_bytes(&bytes).is_err());
        json!({ "name": name, "public": h(&bytes), "error": "InvalidPublicKey" })
    })
    .collect();
    file(
        "P-256 public keys: valid keys with their encodings (SEC1 uncompressed hex and base64url, \
         JWK with the private scalar), and encodings every implementation must refuse.",
        json!({ "valid": valid, "invalid": invalid }),
    )
}

// ---- ecdh.json -------------------------------------------------------------------------------

/// Wycheproof ecdh_secp256r1_ecpoint tc 3: a valid point and scalar whose shared X coordinate
/// is zero. Sotto refuses it as non-contributory.
const ZERO_SHARED_PRIVATE: &str =
    "0a0d622a47e48f6bc1038ace438c6f528aa00ad2bd1da5f13ee46bf5f633d71a";
const ZERO_SHARED_PUBLIC: &str = "0458fd4168a87795603e2b04390285bdca6e57de6027fe211dd9d25e2212d29e\
                                  62080d36bd224d7405509295eed02a17150e03b314f96da37445b0d1d29377d12c";

fn ecdh(rng: &mut ChaCha20Rng) -> Value {
    let zero_secret = hex::decode(ZERO_SHARED_PRIVATE).unwrap_or_default();
    let zero_public = hex::decode(ZERO_SHARED_PUBLIC.replace(' ', "")).unwrap_or_default();
    let refused = DhSecretKey::from_bytes(&zero_secret)
        .and_then(|secret| secret.diffie_hellman(&DhPublicKey::from_bytes(&zero_public)?));
    debug_assert_eq!(refused.err(), Some(crate::keys::KeyError::NonContributoryKey));
    let zero_pair = DhSecretKey::from_bytes(&zero_secret).map(DhKeyPair::from_secret).ok();
    let invalid = vec![json!({
        "name": "shared-x-coordinate-zero (Wycheproof ecdh_secp256r1_ecpoint tc 3)",
        "private": zero_pair.as_ref().map(dh_pair_json),
        "peerPublic": h(&zero_public),
        "error": "NonContributoryKey",
    })];
    let cases: Vec<Value> = (0..4)
        .map(|i| {
            let ours = DhKeyPair::generate(rng);
            let theirs = DhKeyPair::generate(rng);
            let shared = ours.diffie_hellman(theirs.public()).map(|s| h(s.as_bytes()));
            json!({
                "name": format!("ecdh-{i}"),
                "private": dh_pair_json(&ours),
                "peerPublic": h(theirs.public().as_bytes()),
                "shared": shared.unwrap_or_default(),
            })
        })
        .collect();
    file(
        "P-256 ECDH: the shared secret is the 32-byte X coordinate (Web Crypto deriveBits 256). \
         An all-zero output is refused as non-contributory.",
        json!({ "cases": cases, "invalid": invalid }),
    )
}

// ---- signatures.json -------------------------------------------------------------------------

fn flip_high_s(signature: &[u8; 64]) -> Option<[u8; 64]> {
    let parsed = p256::ecdsa::Signature::from_slice(signature).ok()?;
    let (r, s) = parsed.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -s).ok()?;
    let mut out = [0u8; 64];
    out.copy_from_slice(&flipped.to_bytes());
    Some(out)
}

fn signatures(rng: &mut ChaCha20Rng) -> Value {
    let identity = IdentityKeyPair::generate(rng);
    let spk = SignedPrekey::generate(&identity, 7, 1_767_225_600, rng);
    let nonce: [u8; 32] = {
        let mut nonce = [0u8; 32];
        rand_core::Rng::fill_bytes(rng, &mut nonce);
        nonce
    };
    let alice = user("alice");
    let binding = signing::identity_binding_message(
        identity.public().signing_key(),
        identity.public().dh_key(),
    );
    let prekey = signing::signed_prekey_message(
        identity.public().signing_key(),
        spk.id(),
        spk.public().created_at,
        &spk.public().key,
    );
    let auth =
        signing::authentication_message("localhost:3000", &alice, &nonce).unwrap_or_default();
    let mut cases = Vec::new();
    for (kind, message, inputs) in [
        (
            "identityBinding",
            binding,
            json!({ "dhPublic": h(identity.public().dh_key().as_bytes()) }),
        ),
        (
            "signedPrekey",
            prekey,
            json!({
                "id": spk.id(),
                "createdAt": spk.public().created_at,
                "keyPublic": h(spk.public().key.as_bytes()),
            }),
        ),
        (
            "authentication",
            auth,
            json!({ "host": "localhost:3000", "userId": "alice", "nonce": h(&nonce) }),
        ),
    ] {
        let signature = identity.sign(&message);
        let mut tampered_message = message.clone();
        let last = tampered_message.len() - 1;
        tampered_message[last] ^= 0x01;
        let mut tampered_signature = *signature.as_bytes();
        tampered_signature[10] ^= 0x40;
        let other_s = flip_high_s(signature.as_bytes()).unwrap_or([0u8; 64]);
        for (name, message, signature, valid) in [
            ("valid", message.clone(), *signature.as_bytes(), true),
            ("other-s", message.clone(), other_s, true),
            ("tampered-message", tampered_message, *signature.as_bytes(), false),
            ("tampered-signature", message.clone(), tampered_signature, false),
        ] {
            cases.push(json!({
                "name": format!("{kind}-{name}"),
                "kind": kind,
                "inputs": inputs,
                "message": h(&message),
                "signature": h(&signature),
                "valid": valid,
            }));
        }
    }
    file(
        "Domain-separated messages signed by the identity signing key (PROTOCOL.md §4.1), with \
         ECDSA P-256/SHA-256 P1363 signatures. 'message' is the exact signed bytes; \
         implementations rebuild it from 'inputs' and the signer's keys. 'other-s' is the same \
         signature with s replaced by n - s: both forms are accepted.",
        json!({ "signer": identity_json(&identity), "cases": cases }),
    )
}

// ---- kdf.json --------------------------------------------------------------------------------

fn random32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut out = [0u8; 32];
    rand_core::Rng::fill_bytes(rng, &mut out);
    out
}

fn kdf(rng: &mut ChaCha20Rng) -> Value {
    let root_chain: Vec<Value> = (0..3)
        .map(|_| {
            let root = RootKey::from_bytes(random32(rng));
            let a = DhKeyPair::generate(rng);
            let b = DhKeyPair::generate(rng);
            let shared = a.diffie_hellman(b.public()).ok();
            let (dh, next_root, chain) = match &shared {
                Some(shared) => {
                    let (next_root, chain) = root.step(shared);
                    (h(shared.as_bytes()), h(next_root.as_bytes()), h(chain.as_bytes()))
                }
                None => Default::default(),
            };
            json!({
                "rootKey": h(root.as_bytes()),
                "dhOutput": dh,
                "nextRootKey": next_root,
                "chainKey": chain,
            })
        })
        .collect();
    let mut chain = ChainKey::from_bytes(random32(rng));
    let mut chain_steps = Vec::new();
    for _ in 0..4 {
        let (message_key, next) = chain.step();
        chain_steps.push(json!({
            "chainKey": h(chain.as_bytes()),
            "messageKey": h(message_key.as_bytes()),
            "nextChainKey": h(next.as_bytes()),
        }));
        chain = next;
    }
    let message_keys: Vec<Value> = (0..3)
        .map(|_| {
            let key = MessageKey::from_bytes(random32(rng));
            let material = key.expand();
            json!({
                "messageKey": h(key.as_bytes()),
                "aesKey": h(material.key()),
                "nonce": h(material.nonce()),
            })
        })
        .collect();
    file(
        "Double Ratchet KDFs (PROTOCOL.md §6.1): KDF_RK = HKDF-SHA256(salt = root key, ikm = DH \
         output, info 'Sotto v1 P-256 root chain', 64); KDF_CK = HMAC-SHA256(chain key, 0x01 / \
         0x02); message keys = HKDF-SHA256(salt = 32 zero bytes, ikm = MK, info 'Sotto v1 P-256 \
         message keys', 44). The X3DH KDF is in x3dh.json.",
        json!({ "rootChain": root_chain, "chainKey": chain_steps, "messageKeys": message_keys }),
    )
}

// ---- x3dh.json -------------------------------------------------------------------------------

struct Party {
    user: UserId,
    identity: IdentityKeyPair,
    signed_prekey: SignedPrekey,
    one_time_prekey: OneTimePrekey,
}

impl Party {
    fn new(id: &str, spk_id: u32, opk_id: u32, rng: &mut ChaCha20Rng) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let signed_prekey = SignedPrekey::generate(&identity, spk_id, 1_767_225_600, rng);
        let one_time_prekey = OneTimePrekey::generate(opk_id, rng);
        Self { user: user(id), identity, signed_prekey, one_time_prekey }
    }

    fn bundle(&self, with_one_time: bool) -> Option<PrekeyBundle> {
        PrekeyBundle::new(
            self.user.clone(),
            *self.identity.public(),
            *self.signed_prekey.public(),
            with_one_time.then(|| self.one_time_prekey.public()),
        )
        .ok()
    }

    fn json(&self) -> Value {
        json!({
            "userId": self.user.as_str(),
            "identity": identity_json(&self.identity),
            "signedPrekey": signed_prekey_json(&self.signed_prekey),
            "oneTimePrekey": one_time_prekey_json(&self.one_time_prekey),
        })
    }
}

impl PrekeyLookup for Party {
    fn signed_prekey(&self, id: u32) -> Option<SignedPrekey> {
        (id == self.signed_prekey.id()).then(|| self.signed_prekey.clone())
    }
    fn one_time_prekey(&self, id: u32) -> Option<OneTimePrekey> {
        (id == self.one_time_prekey.id()).then(|| self.one_time_prekey.clone())
    }
}

fn x3dh_vectors(rng: &mut ChaCha20Rng) -> Value {
    let mut cases = Vec::new();
    for with_one_time in [true, false] {
        let alice = Party::new("alice", 1, 100, rng);
        let bob = Party::new("bob", 2, 200, rng);
        let ephemeral = DhKeyPair::generate(rng);
        let Some(bundle) = bob.bundle(with_one_time) else {
            continue;
        };
        let outputs = x3dh::initiator_dh_outputs(&alice.identity, &bundle, &ephemeral);
        let initiated =
            x3dh::initiate(&alice.user, &alice.identity, &bob.user, &bundle, &ephemeral);
        let responded = x3dh::respond(
            &bob.user,
            &bob.identity,
            &bob.signed_prekey,
            with_one_time.then_some(&bob.one_time_prekey),
            &InitiatorKeys {
                user: &alice.user,
                identity: alice.identity.public(),
                base_key: ephemeral.public(),
            },
        );
        let (Ok(outputs), Ok(initiated), Ok(responded)) = (outputs, initiated, responded) else {
            continue;
        };
        debug_assert_eq!(initiated.shared_secret.as_bytes(), responded.shared_secret.as_bytes());
        let names = ["dh1", "dh2", "dh3", "dh4"];
        let mut dh = serde_json::Map::new();
        for (name, output) in names.iter().zip(&outputs) {
            dh.insert((*name).to_owned(), json!(h(output.as_bytes())));
        }
        let ikm: Vec<u8> = outputs.iter().flat_map(|o| o.as_bytes().to_vec()).collect();
        cases.push(json!({
            "name": if with_one_time { "with-one-time-prekey" } else { "without-one-time-prekey" },
            "alice": alice.json(),
            "bob": bob.json(),
            "ephemeral": dh_pair_json(&ephemeral),
            "bundleJson": bundle.to_json(),
            "dh": dh,
            "ikm": h(&ikm),
            "sharedSecret": h(initiated.shared_secret.as_bytes()),
            "associatedData": h(initiated.associated_data.as_bytes()),
        }));
    }
    file(
        "X3DH over P-256 (PROTOCOL.md §5): Alice initiates with Bob's bundle and ephemeral key EK. \
         DH1 = DH(IKd_A, SPK_B), DH2 = DH(EK, IKd_B), DH3 = DH(EK, SPK_B), DH4 = DH(EK, OPK_B) \
         when a one-time prekey is used; SK = HKDF-SHA256(32 zero bytes, ikm, 'Sotto v1 P-256 \
         X3DH', 32); AD binds both user ids and identities, initiator first.",
        json!({ "cases": cases }),
    )
}

// ---- aead.json -------------------------------------------------------------------------------

fn aead_vectors(rng: &mut ChaCha20Rng) -> Value {
    let alice = Party::new("alice", 1, 1, rng);
    let bob = Party::new("bob", 1, 1, rng);
    let ad = x3dh::AssociatedData::new(
        &alice.user,
        alice.identity.public(),
        &bob.user,
        bob.identity.public(),
    );
    let cases: Vec<Value> = [("short", "hi"), ("longer", &"a longer message ".repeat(9)[..])]
        .iter()
        .enumerate()
        .map(|(i, (name, text))| {
            let message_key = MessageKey::from_bytes(random32(rng));
            let material = message_key.expand();
            let header =
                Header { dh: *DhKeyPair::generate(rng).public(), pn: i as u32, n: 3 + i as u32 };
            let record = Record::text(text, 1_767_225_600_000, 1, 0, MessageDigest::NONE);
            let padded = record.encode().and_then(|e| record::pad(&e)).unwrap_or_default();
            let aad = message_associated_data(&ad, &header);
            let ciphertext = aead::seal(&material, &padded, &aad).unwrap_or_default();
            json!({
                "name": name,
                "messageKey": h(message_key.as_bytes()),
                "aesKey": h(material.key()),
                "nonce": h(material.nonce()),
                "associatedData": h(ad.as_bytes()),
                "header": { "dhB64": b64(header.dh.as_bytes()), "pn": header.pn, "n": header.n },
                "headerBytes": h(&header.encode()),
                "aad": h(&aad),
                "plaintext": h(&padded),
                "ciphertext": h(&ciphertext),
            })
        })
        .collect();
    file(
        "AES-256-GCM with a message key's expansion (PROTOCOL.md §6.1-6.2): aad = AD ‖ \
         header_bytes, header_bytes = version ‖ suite ‖ dh ‖ pn (u32 BE) ‖ n (u32 BE); the \
         ciphertext ends with the 16-byte tag.",
        json!({ "cases": cases }),
    )
}

// ---- records.json ----------------------------------------------------------------------------

fn record_json(record: &Record) -> Value {
    let mut value = json!({
        "sentAt": record.sent_at,
        "counter": record.counter,
        "lastReceivedCounter": record.last_received_counter,
        "lastReceivedDigest": h(&record.last_received_digest.0),
    });
    match &record.body {
        RecordBody::Text(text) => {
            value["kind"] = json!("text");
            value["text"] = json!(text.as_str());
        }
        RecordBody::Receipt(receipt) => {
            value["kind"] = json!("receipt");
            value["receipt"] = json!({
                "type": match receipt.kind { ReceiptKind::Delivered => "delivered", ReceiptKind::Read => "read" },
                "counters": receipt.counters,
            });
        }
        RecordBody::Unsupported { kind } => {
            value["kind"] = json!("unsupported");
            value["kindByte"] = json!(kind);
        }
    }
    value
}

fn records() -> Value {
    let digest = MessageDigest::of_encoded(b"previous record");
    let samples = [
        ("text-short", Record::text("hello", 1_767_225_600_000, 1, 0, MessageDigest::NONE)),
        ("text-unicode", Record::text("grüß dich 👋 — ok", 1_767_225_601_234, 2, 1, digest)),
        ("text-fills-64", Record::text(&"x".repeat(5), 1, 3, 2, digest)),
        ("text-needs-128", Record::text(&"y".repeat(6), 1, 4, 2, digest)),
        ("text-2000", Record::text(&"z".repeat(2000), 1_767_225_602_000, 5, 4, digest)),
        (
            "receipt-delivered",
            Record {
                body: RecordBody::Receipt(Receipt {
                    kind: ReceiptKind::Delivered,
                    counters: vec![1, 2, 3],
                }),
                ..Record::text("-", 1_767_225_603_000, 6, 5, digest)
            },
        ),
        (
            "receipt-read",
            Record {
                body: RecordBody::Receipt(Receipt { kind: ReceiptKind::Read, counters: vec![42] }),
                ..Record::text("-", 1_767_225_604_000, 7, 5, digest)
            },
        ),
    ];
    let valid: Vec<Value> = samples
        .iter()
        .map(|(name, record)| {
            let encoded = record.encode().unwrap_or_default();
            let padded = record::pad(&encoded).unwrap_or_default();
            json!({
                "name": name,
                "record": record_json(record),
                "encoded": h(&encoded),
                "padded": h(&padded),
                "digest": h(&MessageDigest::of_encoded(&encoded).0),
            })
        })
        .collect();

    let text = samples[0].1.encode().unwrap_or_default().to_vec();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = text.clone();
        f(&mut bytes);
        bytes
    };
    let padded = |bytes: &[u8]| record::pad(bytes).map(|p| p.to_vec()).unwrap_or_default();
    let mut unsupported = text.clone();
    unsupported[1] = 9;
    let unsupported_case = json!({
        "name": "unknown-kind-is-unsupported",
        "padded": h(&padded(&unsupported)),
        "record": record_json(&Record::decode(&unsupported).unwrap_or_else(|_| samples[0].1.clone())),
    });
    let with_marker = |marker: u8| {
        let mut bytes = padded(&text);
        bytes[text.len()] = marker;
        bytes
    };
    let invalid: Vec<Value> = [
        ("no-marker", vec![0u8; 64], "InvalidPadding"),
        ("marker-not-0x80", with_marker(0x81), "InvalidPadding"),
        ("not-a-bucket-size", [padded(&text), vec![0u8]].concat(), "InvalidPadding"),
        ("bucket-too-small", padded(&text)[..32].to_vec(), "InvalidPadding"),
        ("record-version-2", padded(&with(&|b| b[0] = 2)), "UnsupportedVersion"),
        ("truncated-header", padded(&text[..40]), "Truncated"),
        ("empty-text", padded(&text[..record::RECORD_HEADER_LEN]), "InvalidText"),
        ("invalid-utf8", padded(&with(&|b| b[record::RECORD_HEADER_LEN] = 0xc3)), "InvalidText"),
        (
            "receipt-count-mismatch",
            padded(&with(&|b| {
                b.truncate(record::RECORD_HEADER_LEN);
                b[1] = 2;
                b.extend_from_slice(&[1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
            })),
            "InvalidReceipt",
        ),
        (
            "receipt-unknown-type",
            padded(&with(&|b| {
                b.truncate(record::RECORD_HEADER_LEN);
                b[1] = 2;
                b.extend_from_slice(&[3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
            })),
            "InvalidReceipt",
        ),
    ]
    .into_iter()
    .map(|(name, padded, error)| {
        let actual = record::unpad(&padded).and_then(Record::decode).err();
        debug_assert!(actual.is_some(), "{name} must be refused");
        json!({ "name": name, "padded": h(&padded), "error": error })
    })
    .collect();
    file(
        "Plaintext records (PROTOCOL.md §7): encoding, ISO/IEC 7816-4 padding to power-of-two \
         buckets from 64 to 32768 bytes, digest = SHA-256('Sotto v1 message digest' ‖ 0x00 ‖ \
         encoded record). 'invalid' cases give a padded plaintext and the error (code) that \
         unpadding and decoding it must produce.",
        json!({ "valid": valid, "unsupported": [unsupported_case], "invalid": invalid }),
    )
}

// ---- wire.json -------------------------------------------------------------------------------

fn wire(rng: &mut ChaCha20Rng) -> Value {
    let alice = Party::new("alice", 1, 11, rng);
    let bob = Party::new("bob", 5, 55, rng);
    let bundle_with = bob.bundle(true);
    let bundle_without = bob.bundle(false);
    let mut record = SessionRecord::new();
    let local = LocalParty { user: &alice.user, identity: &alice.identity };
    let mut envelopes = Vec::new();
    if let Some(bundle) = &bundle_with {
        if let Ok(session) = Session::initiate(local, &bob.user, bundle, rng) {
            record.promote(session);
        }
        let text = Record::text("wire", 1_767_225_600_000, 1, 0, MessageDigest::NONE);
        if let Ok((envelope, _)) = record.encrypt(&text) {
            envelopes.push(("prekey-message", envelope.clone()));
            let mut plain = envelope;
            plain.prekey = None;
            envelopes.push(("message", plain));
        }
    }
    let bundles: Vec<Value> =
        [("with-one-time-prekey", &bundle_with), ("without", &bundle_without)]
            .iter()
            .filter_map(|(name, bundle)| {
                let bundle = bundle.as_ref()?;
                Some(json!({
                    "name": name,
                    "json": bundle.to_json(),
                    "userId": bundle.user_id().as_str(),
                    "signedPrekeyId": bundle.signed_prekey().id,
                    "oneTimePrekeyId": bundle.one_time_prekey().map(|k| k.id),
                }))
            })
            .collect();
    let envelope_cases: Vec<Value> = envelopes
        .iter()
        .map(|(name, envelope)| {
            json!({
                "name": name,
                "json": envelope.to_json(),
                "header": {
                    "dh": h(envelope.header.dh.as_bytes()),
                    "pn": envelope.header.pn,
                    "n": envelope.header.n,
                },
                "isPrekeyMessage": envelope.prekey.is_some(),
                "ciphertextLength": envelope.ciphertext.len(),
            })
        })
        .collect();

    let base: Value = envelopes
        .first()
        .and_then(|(_, e)| serde_json::from_str(&e.to_json()).ok())
        .unwrap_or_default();
    let bundle_base: Value = bundle_with
        .as_ref()
        .and_then(|b| serde_json::from_str(&b.to_json()).ok())
        .unwrap_or_default();
    let edit = |base: &Value, f: &dyn Fn(&mut Value)| {
        let mut value = base.clone();
        f(&mut value);
        value.to_string()
    };
    let other_key = b64(DhKeyPair::generate(rng).public().as_bytes());
    let mut off_curve = *alice.identity.public().dh_key().as_bytes();
    off_curve[64] ^= 1;
    let off_curve = b64(&off_curve);
    let invalid: Vec<Value> = [
        ("envelope", "not-json", "{".to_owned(), "Json"),
        ("envelope", "top-level-array", "[]".to_owned(), "Json"),
        ("envelope", "version-2", edit(&base, &|v| v["version"] = json!(2)), "UnsupportedVersion"),
        ("envelope", "suite-9", edit(&base, &|v| v["suite"] = json!(9)), "UnsupportedSuite"),
        ("envelope", "unknown-field", edit(&base, &|v| v["extra"] = json!(1)), "Json"),
        (
            "envelope",
            "missing-header",
            edit(&base, &|v| {
                v.as_object_mut().map(|o| o.remove("header"));
            }),
            "Json",
        ),
        ("envelope", "n-not-integer", edit(&base, &|v| v["header"]["n"] = json!("1")), "Json"),
        (
            "envelope",
            "n-too-large",
            edit(&base, &|v| v["header"]["n"] = json!(4_294_967_296u64)),
            "Json",
        ),
        (
            "envelope",
            "dh-padded-base64",
            edit(&base, &|v| {
                v["header"]["dh"] = json!(format!("{}=", v["header"]["dh"].as_str().unwrap_or("")))
            }),
            "InvalidBase64",
        ),
        (
            "envelope",
            "dh-standard-alphabet",
            edit(&base, &|v| {
                v["header"]["dh"] = json!(
                    v["header"]["dh"].as_str().unwrap_or("").replace('-', "+").replace('_', "/")
                        + "+"
                )
            }),
            "InvalidBase64",
        ),
        (
            "envelope",
            "dh-wrong-length",
            edit(&base, &|v| v["header"]["dh"] = json!(b64(&[4u8; 64]))),
            "InvalidLength",
        ),
        (
            "envelope",
            "dh-off-curve",
            edit(&base, &|v| v["header"]["dh"] = json!(off_curve)),
            "InvalidPublicKey",
        ),
        (
            "envelope",
            "ciphertext-not-bucket",
            edit(&base, &|v| v["ciphertext"] = json!(b64(&[0u8; 100]))),
            "InvalidCiphertextLength",
        ),
        (
            "envelope",
            "ciphertext-too-short",
            edit(&base, &|v| v["ciphertext"] = json!(b64(&[0u8; 16]))),
            "InvalidCiphertextLength",
        ),
        (
            "envelope",
            "prekey-identity-swapped-dh",
            edit(&base, &|v| v["prekey"]["identity"]["dh"] = json!(other_key)),
            "InvalidSignature",
        ),
        ("envelope", "prekey-unknown-field", edit(&base, &|v| v["prekey"]["x"] = json!(0)), "Json"),
        (
            "bundle",
            "version-0",
            edit(&bundle_base, &|v| v["version"] = json!(0)),
            "UnsupportedVersion",
        ),
        ("bundle", "suite-2", edit(&bundle_base, &|v| v["suite"] = json!(2)), "UnsupportedSuite"),
        (
            "bundle",
            "user-id-not-normalised",
            edit(&bundle_base, &|v| v["userId"] = json!("Bob")),
            "InvalidUserId",
        ),
        (
            "bundle",
            "user-id-invalid",
            edit(&bundle_base, &|v| v["userId"] = json!("b")),
            "InvalidUserId",
        ),
        (
            "bundle",
            "signed-prekey-swapped",
            edit(&bundle_base, &|v| v["signedPrekey"]["key"] = json!(other_key)),
            "InvalidSignature",
        ),
        (
            "bundle",
            "signed-prekey-id-changed",
            edit(&bundle_base, &|v| v["signedPrekey"]["id"] = json!(6)),
            "InvalidSignature",
        ),
        (
            "bundle",
            "signed-prekey-older",
            edit(&bundle_base, &|v| v["signedPrekey"]["createdAt"] = json!(1)),
            "InvalidSignature",
        ),
        (
            "bundle",
            "created-at-beyond-2^53",
            edit(&bundle_base, &|v| {
                v["signedPrekey"]["createdAt"] = json!(9_007_199_254_740_992u64)
            }),
            "OutOfRange",
        ),
        (
            "bundle",
            "identity-signing-swapped",
            edit(&bundle_base, &|v| {
                v["identity"]["signing"] =
                    json!(b64(alice.identity.public().signing_key().as_bytes()))
            }),
            "InvalidSignature",
        ),
        (
            "bundle",
            "one-time-prekey-off-curve",
            edit(&bundle_base, &|v| v["oneTimePrekey"]["key"] = json!(off_curve)),
            "InvalidPublicKey",
        ),
        (
            "bundle",
            "missing-identity",
            edit(&bundle_base, &|v| {
                v.as_object_mut().map(|o| o.remove("identity"));
            }),
            "Json",
        ),
    ]
    .into_iter()
    .map(|(kind, name, text, error)| {
        let actual = match kind {
            "envelope" => Envelope::from_json(&text).err().map(|e| error_code(&e)),
            _ => PrekeyBundle::from_json(&text).err().map(|e| error_code(&e)),
        };
        debug_assert_eq!(actual.as_deref(), Some(error), "{name}");
        json!({ "kind": kind, "name": name, "json": text, "error": error })
    })
    .collect();
    file(
        "JSON wire types (PROTOCOL.md §8): bundles and envelopes as both implementations write \
         them (field order included), and inputs the strict decoders must refuse, with the error \
         code.",
        json!({ "bundles": bundles, "envelopes": envelope_cases, "invalid": invalid }),
    )
}

/// The stable code of a decode error, as used in the vectors and by the web client.
pub fn error_code(error: &crate::wire::DecodeError) -> String {
    use crate::wire::DecodeError as E;
    match error {
        E::Json(_) => "Json",
        E::UnsupportedVersion(_) => "UnsupportedVersion",
        E::UnsupportedSuite(_) => "UnsupportedSuite",
        E::InvalidBase64 { .. } => "InvalidBase64",
        E::InvalidLength { .. } => "InvalidLength",
        E::InvalidPublicKey { .. } => "InvalidPublicKey",
        E::InvalidSignature { .. } => "InvalidSignature",
        E::InvalidUserId(_) => "InvalidUserId",
        E::InvalidCiphertextLength(_) => "InvalidCiphertextLength",
        E::OutOfRange { .. } => "OutOfRange",
    }
    .to_owned()
}

// ---- ratchet.json ----------------------------------------------------------------------------

/// One side of the scripted conversation.
struct Speaker {
    party: Party,
    record: SessionRecord,
    /// Ratchet private keys in the order this side created them.
    ratchet_keys: Vec<Value>,
    sent: u64,
    last_received: (u64, MessageDigest),
}

impl Speaker {
    fn note_new_ratchet_key(&mut self) {
        if let Some(session) = self.record.current() {
            let pair = &session.ratchet().dh_self;
            let value = dh_pair_json(pair);
            if self.ratchet_keys.last() != Some(&value) {
                self.ratchet_keys.push(value);
            }
        }
    }
}

fn ratchet(rng: &mut ChaCha20Rng) -> Value {
    let mut alice = Speaker {
        party: Party::new("alice", 1, 10, rng),
        record: SessionRecord::new(),
        ratchet_keys: Vec::new(),
        sent: 0,
        last_received: (0, MessageDigest::NONE),
    };
    let mut bob = Speaker {
        party: Party::new("bob", 3, 30, rng),
        record: SessionRecord::new(),
        ratchet_keys: Vec::new(),
        sent: 0,
        last_received: (0, MessageDigest::NONE),
    };
    let Some(bundle) = bob.party.bundle(true) else {
        return json!({});
    };
    let ephemeral = DhKeyPair::generate(rng);
    let first_ratchet_key = DhKeyPair::generate(rng);
    let local = LocalParty { user: &alice.party.user, identity: &alice.party.identity };
    match Session::initiate_with_keys(
        local,
        &bob.party.user,
        &bundle,
        &ephemeral,
        first_ratchet_key,
    ) {
        Ok(session) => alice.record.promote(session),
        Err(_) => return json!({}),
    }
    alice.note_new_ratchet_key();

    let mut messages: Vec<Value> = Vec::new();
    let mut envelopes: Vec<Envelope> = Vec::new();
    let mut senders: Vec<bool> = Vec::new(); // true: Alice
    let mut steps: Vec<Value> = Vec::new();
    let mut clock = 1_767_225_600_000u64;

    // (sender is Alice?, text) or deliver(index) or replay/tamper checks.
    enum Op {
        Send(bool, &'static str),
        Deliver(usize),
        Tamper(usize),
    }
    use Op::{Deliver, Send, Tamper};
    let script = [
        Send(true, "Hi Bob, it's Alice."),
        Send(true, "Are you there?"),
        Send(true, "This is the third message before any reply."),
        Deliver(1),
        Deliver(0),
        Deliver(2),
        Send(false, "Hi Alice! Got all three."),
        Send(false, "Second reply, delivered first."),
        Deliver(4),
        Deliver(3),
        Send(true, "Great, a new chain on my side."),
        Send(true, "This one will arrive late."),
        Send(true, "And this one skips it."),
        Deliver(5),
        Deliver(7),
        Send(false, "Bob again, after a DH step."),
        Deliver(6),
        Deliver(8),
        Send(true, "Alice's third chain, first message."),
        Send(true, "Alice's third chain, second message."),
        Deliver(10),
        Send(false, "Bob's third chain."),
        Deliver(11),
        Send(true, "Alice's fourth chain."),
        Deliver(9),
        Deliver(12),
        Deliver(2),
        Send(true, "Alice's fourth chain, second message."),
        Tamper(13),
        Deliver(13),
    ];
    for op in script {
        match op {
            Send(from_alice, text) => {
                clock += 1_000;
                let speaker = if from_alice { &mut alice } else { &mut bob };
                speaker.sent += 1;
                let record = Record::text(
                    text,
                    clock,
                    speaker.sent,
                    speaker.last_received.0,
                    speaker.last_received.1,
                );
                let chain = speaker.record.current().and_then(|s| s.ratchet().sending.clone());
                let Ok((envelope, digest)) = speaker.record.encrypt(&record) else {
                    continue;
                };
                let message_key = chain.map(|c| c.step().0);
                let material = message_key.as_ref().map(MessageKey::expand);
                let encoded = record.encode().unwrap_or_default();
                let index = messages.len();
                messages.push(json!({
                    "index": index,
                    "from": if from_alice { "alice" } else { "bob" },
                    "record": record_json(&record),
                    "encodedRecord": h(&encoded),
                    "paddedRecord": h(&record::pad(&encoded).map(|p| p.to_vec()).unwrap_or_default()),
                    "digest": h(&digest.0),
                    "header": {
                        "dh": h(envelope.header.dh.as_bytes()),
                        "pn": envelope.header.pn,
                        "n": envelope.header.n,
                    },
                    "headerBytes": h(&envelope.header.encode()),
                    "messageKey": message_key.map(|k| h(k.as_bytes())),
                    "aesKey": material.as_ref().map(|m| h(m.key())),
                    "nonce": material.as_ref().map(|m| h(m.nonce())),
                    "envelopeJson": envelope.to_json(),
                }));
                steps.push(json!({ "op": "send", "message": index }));
                envelopes.push(envelope);
                senders.push(from_alice);
            }
            Deliver(index) | Tamper(index) => {
                let tamper = matches!(op, Tamper(_));
                let from_alice = senders[index];
                let (receiver, sender) =
                    if from_alice { (&mut bob, &alice) } else { (&mut alice, &bob) };
                let mut envelope = envelopes[index].clone();
                if tamper {
                    envelope.ciphertext[0] ^= 0x01;
                }
                let before = receiver.record.to_bytes();
                let local =
                    LocalParty { user: &receiver.party.user, identity: &receiver.party.identity };
                let result = receiver.record.decrypt(
                    local,
                    &sender.party.user,
                    &envelope,
                    &receiver.party,
                    rng,
                );
                let outcome = match result {
                    Ok(decrypted) => {
                        receiver.last_received = (decrypted.record.counter, decrypted.digest);
                        receiver.note_new_ratchet_key();
                        json!({ "result": "ok", "text": decrypted.record.as_text() })
                    }
                    Err(error) => {
                        debug_assert_eq!(*before, *receiver.record.to_bytes());
                        json!({ "result": decrypt_error_code(error) })
                    }
                };
                let mut step = json!({
                    "op": if tamper { "deliverTampered" } else { "deliver" },
                    "message": index,
                    "to": if from_alice { "bob" } else { "alice" },
                });
                if tamper {
                    step["tamperedEnvelopeJson"] = json!(envelope.to_json());
                }
                if let (Value::Object(step), Value::Object(outcome)) = (&mut step, outcome) {
                    step.extend(outcome);
                }
                steps.push(step);
            }
        }
    }
    let associated_data =
        alice.record.current().map(|s| h(s.associated_data().as_bytes())).unwrap_or_default();
    file(
        "A scripted Double Ratchet conversation (PROTOCOL.md §6) with prekey messages, \
         out-of-order delivery within and across DH ratchet steps, a duplicate and a tampered \
         message. Each side takes fresh ratchet keys from its 'ratchetKeys' list in order \
         (Alice's first is the one made at initiation, after 'ephemeral'); a step's 'result' is \
         'ok' with the decrypted text, or the error code. Decrypting in the given order must \
         reproduce every value.",
        json!({
            "alice": alice.party.json(),
            "bob": bob.party.json(),
            "bundleJson": bundle.to_json(),
            "ephemeral": dh_pair_json(&ephemeral),
            "associatedData": associated_data,
            "aliceRatchetKeys": alice.ratchet_keys,
            "bobRatchetKeys": bob.ratchet_keys,
            "messages": messages,
            "steps": steps,
        }),
    )
}

/// The stable code of a decryption error.
pub fn decrypt_error_code(error: DecryptError) -> &'static str {
    match error {
        DecryptError::NoSession => "NoSession",
        DecryptError::UnknownSignedPrekey(_) => "UnknownSignedPrekey",
        DecryptError::UnknownOneTimePrekey(_) => "UnknownOneTimePrekey",
        DecryptError::DuplicateMessage => "DuplicateMessage",
        DecryptError::TooManySkipped => "TooManySkipped",
        DecryptError::DecryptionFailed => "DecryptionFailed",
        DecryptError::InvalidPrekeyMessage => "InvalidPrekeyMessage",
    }
}

// ---- safety-number.json ----------------------------------------------------------------------

fn safety_numbers(rng: &mut ChaCha20Rng) -> Value {
    let cases: Vec<Value> = [("alice", "bob"), ("zoe.k", "adam_1")]
        .iter()
        .map(|(a, b)| {
            let ida = IdentityKeyPair::generate(rng);
            let idb = IdentityKeyPair::generate(rng);
            let (ua, ub) = (user(a), user(b));
            let fa = safety_number::fingerprint(&ua, ida.public());
            let fb = safety_number::fingerprint(&ub, idb.public());
            let number = SafetyNumber::compute(&ua, ida.public(), &ub, idb.public());
            json!({
                "userA": a,
                "identityA": { "signing": h(ida.public().signing_key().as_bytes()), "dh": h(ida.public().dh_key().as_bytes()) },
                "userB": b,
                "identityB": { "signing": h(idb.public().signing_key().as_bytes()), "dh": h(idb.public().dh_key().as_bytes()) },
                "fingerprintA": h(&fa),
                "fingerprintB": h(&fb),
                "digitsA": safety_number::digits(&fa),
                "digitsB": safety_number::digits(&fb),
                "safetyNumber": number.digits(),
                "grouped": number.grouped(),
                "qr": h(number.qr_payload()),
                "qrB64": b64(number.qr_payload()),
            })
        })
        .collect();
    file(
        "Safety numbers (PROTOCOL.md §9): fingerprint = SHA-512 iterated 5200 times over \
         version (u16 = 1) ‖ IKs ‖ IKd ‖ user id, then ‖ IKs ‖ IKd each round; 30 digits per \
         user; the halves sorted and joined; QR = 0x01 ‖ 32 bytes of each fingerprint in digit \
         order.",
        json!({ "cases": cases }),
    )
}
