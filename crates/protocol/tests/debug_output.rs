//! `Debug` output of everything that holds secrets, pinned: public parts only, never a private
//! key, chain key, message key or plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use sotto_protocol::kdf::{ChainKey, MessageKey, RootKey};
use sotto_protocol::{DhKeyPair, IdentityKeyPair, Record, SignedPrekey};
use support::{Device, rng};

#[test]
fn debug_output_is_pinned_and_holds_no_secrets() {
    let mut rng = rng(42);
    let identity = IdentityKeyPair::generate(&mut rng);
    let pair = DhKeyPair::generate(&mut rng);
    let spk = SignedPrekey::generate(&identity, 3, 1_767_225_600, &mut rng);
    let mut alice = Device::new("alice", &mut rng);
    let mut bob = Device::new("bob", &mut rng);
    alice.send(&mut bob, "secret text", &mut rng);
    let record = alice.session_record(&bob.user);

    let printed = [
        format!("{identity:?}"),
        format!("{pair:?}"),
        format!("{:?}", pair.secret()),
        format!("{spk:?}"),
        format!("{:?}", RootKey::from_bytes([7; 32])),
        format!("{:?}", ChainKey::from_bytes([7; 32])),
        format!("{:?}", MessageKey::from_bytes([7; 32])),
        format!("{:?}", Record::text("secret text", 1, 1, 0, Default::default())),
        format!("{record:?}"),
    ];
    let expected = [
        "IdentityKeyPair { public: PublicIdentity { signing: VerifyingKey(5a2db852dc9f397f…), dh: DhPublicKey(d7b45321c89c3f3a…), .. }, .. }",
        "DhKeyPair(public: DhPublicKey(8baef7251dfe1c53…))",
        "DhSecretKey(public: DhPublicKey(8baef7251dfe1c53…))",
        "SignedPrekey { public: SignedPrekeyPublic { id: 3, created_at: 1767225600, key: DhPublicKey(b84a45277828fce1…), signature: Signature(d18f3f65cd354b4c…) }, .. }",
        "RootKey(..)",
        "ChainKey(..)",
        "MessageKey(..)",
        "Record { sent_at: 1, counter: 1, last_received_counter: 0, last_received_digest: MessageDigest(0000000000000000…), body: Text(11 bytes) }",
        concat!(
            "SessionRecord { sessions: [Session { local_user: UserId(alice), remote_user: UserId(bob), ",
            "remote_identity: PublicIdentity { signing: VerifyingKey(9505965d838e4dbb…), dh: DhPublicKey(f3a9cbf4501d4ae6…), .. }, ",
            "base_key: DhPublicKey(ba0911e38c7ff873…), awaiting_reply: true, ratchet: RatchetState { ",
            "ratchet_key: DhPublicKey(ff4f10a965986654…), remote_ratchet_key: Some(DhPublicKey(ad50093bce0adfb9…)), ",
            "ns: 1, nr: 0, pn: 0, skipped_keys: 0, .. } }] }"
        ),
    ];
    for (printed, expected) in printed.iter().zip(expected) {
        assert_eq!(printed, expected);
    }

    // Independently of the pinned text: no secret bytes appear in any of it.
    let secrets = [
        hex::encode(*identity.signing_key().to_bytes()),
        hex::encode(*identity.dh_key_pair().secret().to_bytes()),
        hex::encode(*pair.secret().to_bytes()),
        hex::encode(*spk.key_pair().secret().to_bytes()),
        hex::encode([7u8; 32]),
        "secret text".to_owned(),
    ];
    for text in &printed {
        for secret in &secrets {
            assert!(!text.contains(&secret[..secret.len().min(16)]), "{text} leaks a secret");
        }
    }
}
