//! Writes seed inputs for the fuzz targets to `fuzz/corpus/<target>/`: the test vectors'
//! bundles, envelopes, headers and records, and saved session records from a short
//! conversation. Run once before the first fuzzing campaign; the fuzzer grows the corpus.
//! An optional argument names another output folder.
//!
//! ```text
//! cargo run -p sotto-protocol --example fuzz-seeds
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::record::{self, MessageDigest};
use sotto_protocol::session::{LocalParty, PrekeyLookup, Session};
use sotto_protocol::wire::HeaderJson;
use sotto_protocol::{IdentityKeyPair, PrekeyBundle, Record, SessionRecord, SignedPrekey, UserId};

fn write(dir: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let name = hex::encode(&Sha256::digest(bytes)[..10]);
    std::fs::write(dir.join(name), bytes).unwrap();
}

struct Keys(SignedPrekey, OneTimePrekey);

impl PrekeyLookup for Keys {
    fn signed_prekey(&self, _: u32) -> Option<SignedPrekey> {
        Some(self.0.clone())
    }
    fn one_time_prekey(&self, _: u32) -> Option<OneTimePrekey> {
        Some(self.1.clone())
    }
}

fn main() {
    let corpus = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"));
    let vectors = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors");
    let wire: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vectors.join("wire.json")).unwrap()).unwrap();
    for bundle in wire["bundles"].as_array().unwrap() {
        write(&corpus.join("bundle"), bundle["json"].as_str().unwrap().as_bytes());
    }
    for envelope in wire["envelopes"].as_array().unwrap() {
        let text = envelope["json"].as_str().unwrap();
        write(&corpus.join("envelope"), text.as_bytes());
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        write(&corpus.join("header"), value["header"].to_string().as_bytes());
    }
    for case in wire["invalid"].as_array().unwrap() {
        let target = if case["kind"] == "bundle" { "bundle" } else { "envelope" };
        write(&corpus.join(target), case["json"].as_str().unwrap().as_bytes());
    }
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vectors.join("records.json")).unwrap())
            .unwrap();
    for case in
        records["valid"].as_array().unwrap().iter().chain(records["invalid"].as_array().unwrap())
    {
        write(&corpus.join("record"), &hex::decode(case["padded"].as_str().unwrap()).unwrap());
    }

    // Saved sessions at a few points of a conversation.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
    let (alice_id, bob_id) =
        (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
    let keys =
        Keys(SignedPrekey::generate(&bob_id, 1, 0, &mut rng), OneTimePrekey::generate(1, &mut rng));
    let bundle =
        PrekeyBundle::new(bob.clone(), *bob_id.public(), *keys.0.public(), Some(keys.1.public()))
            .unwrap();
    let mut a = SessionRecord::new();
    a.promote(
        Session::initiate(
            LocalParty { user: &alice, identity: &alice_id },
            &bob,
            &bundle,
            &mut rng,
        )
        .unwrap(),
    );
    let mut b = SessionRecord::new();
    write(&corpus.join("session_state"), &a.to_bytes());
    for i in 0..4u64 {
        let text = Record::text("seed", i, i + 1, 0, MessageDigest::NONE);
        let (first, _) = a.encrypt(&text).unwrap();
        let (skipped, _) = a.encrypt(&text).unwrap();
        b.decrypt(LocalParty { user: &bob, identity: &bob_id }, &alice, &skipped, &keys, &mut rng)
            .unwrap();
        let (reply, _) = b.encrypt(&text).unwrap();
        a.decrypt(LocalParty { user: &alice, identity: &alice_id }, &bob, &reply, &keys, &mut rng)
            .unwrap();
        let _ = first;
        write(&corpus.join("session_state"), &a.to_bytes());
        write(&corpus.join("session_state"), &b.to_bytes());
        write(
            &corpus.join("header"),
            serde_json::to_string(&HeaderJson::from(&reply.header)).unwrap().as_bytes(),
        );
        write(&corpus.join("record"), &record::pad(&text.encode().unwrap()).unwrap());
    }
    for seed in [
        &b"\x00\x00\x01\x02\x03"[..],
        b"\x05\x08\x10\x11\x02\x03\x06\x07\x01\x00",
        b"\x00\x01\x00\x01\x02\x02\x0a\x0b\x05\x0d",
    ] {
        write(&corpus.join("conversation"), seed);
    }
}
