//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the tests that replay their
//! corpora (`tests/fuzz_corpus.rs`), so a crash found by the fuzzer stays a regression test.
//!
//! Each function takes arbitrary bytes and must never panic except on a broken invariant, which
//! is exactly what the fuzzer is looking for.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::record::{self, MessageDigest, Record};
use crate::session::{DecryptError, LocalParty, PrekeyLookup, Session, SessionRecord};
use crate::wire::{self, Envelope, HeaderJson};
use crate::{IdentityKeyPair, UserId};

/// Decodes a bundle; whatever decodes must re-encode to something that decodes the same.
pub fn bundle(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(bundle) = PrekeyBundle::from_json(text) {
        let again = PrekeyBundle::from_json(&bundle.to_json()).expect("re-encoded bundle decodes");
        assert_eq!(again, bundle);
    }
}

/// Decodes an envelope; round trip as for bundles.
pub fn envelope(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(envelope) = Envelope::from_json(text) {
        let again = Envelope::from_json(&envelope.to_json()).expect("re-encoded envelope decodes");
        assert_eq!(again, envelope);
        wire::check_ciphertext_len(envelope.ciphertext.len()).expect("length was checked");
    }
}

/// Decodes a header.
pub fn header(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<HeaderJson>(data) else {
        return;
    };
    if let Ok(header) = crate::ratchet::Header::try_from(&json) {
        assert_eq!(HeaderJson::from(&header), json);
    }
}

/// Restores a session record and, when that works, saves it again identically.
pub fn session_state(data: &[u8]) {
    if let Ok(record) = SessionRecord::from_bytes(data) {
        let bytes = record.to_bytes();
        let again = SessionRecord::from_bytes(&bytes).expect("saved state restores");
        assert_eq!(*again.to_bytes(), *bytes);
    }
}

/// Unpads and decodes a record; whatever decodes must encode back to the same bytes.
pub fn record(data: &[u8]) {
    if let Ok(encoded) = record::unpad(data)
        && let Ok(decoded) = Record::decode(encoded)
        && let Ok(again) = decoded.encode()
    {
        assert_eq!(&again[..], encoded);
    }
    let _ = Record::decode(data);
}

struct Prekeys {
    signed: SignedPrekey,
    one_time: Vec<OneTimePrekey>,
}

impl PrekeyLookup for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<SignedPrekey> {
        (id == self.signed.id()).then(|| self.signed.clone())
    }
    fn one_time_prekey(&self, id: u32) -> Option<OneTimePrekey> {
        self.one_time.iter().find(|k| k.id() == id).cloned()
    }
}

struct Side {
    user: UserId,
    identity: IdentityKeyPair,
    prekeys: Prekeys,
    sessions: SessionRecord,
}

/// Plays a two-party conversation driven by the input: each byte picks an operation (send,
/// deliver, drop, duplicate, tamper, save/restore). Checks that every delivered message
/// decrypts exactly once, that tampered and duplicated ones fail without changing the state,
/// and that the two sides can always still talk at the end.
pub fn conversation(data: &[u8]) {
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(data.first().copied().unwrap_or(0)));
    let side = |id: &str, rng: &mut ChaCha20Rng| {
        let identity = IdentityKeyPair::generate(rng);
        let signed = SignedPrekey::generate(&identity, 1, 0, rng);
        let one_time = (0..4).map(|i| OneTimePrekey::generate(i, rng)).collect();
        Side {
            user: UserId::parse(id).unwrap(),
            identity,
            prekeys: Prekeys { signed, one_time },
            sessions: SessionRecord::new(),
        }
    };
    let mut sides = [side("alice", &mut rng), side("bob", &mut rng)];
    // (from, envelope, text), in flight and delivered.
    let mut in_flight: Vec<(usize, Envelope, String)> = Vec::new();
    let mut delivered: Vec<(usize, Envelope)> = Vec::new();
    let mut sent = 0u64;

    for &byte in data.iter().skip(1).take(256) {
        let arg = usize::from(byte >> 3);
        match byte & 7 {
            0 | 1 => {
                let from = usize::from(byte & 1);
                sent += 1;
                let text = format!("m{sent}");
                if let Some(envelope) = send(&mut sides, from, &text, &mut rng) {
                    in_flight.push((from, envelope, text));
                }
            }
            2 | 3 if !in_flight.is_empty() => {
                let (from, envelope, text) = in_flight.remove(arg % in_flight.len());
                let got = receive(&mut sides, from, &envelope, &mut rng);
                assert_eq!(got.as_deref(), Ok(text.as_str()), "delivered message decrypts");
                delivered.push((from, envelope));
            }
            4 if !in_flight.is_empty() => {
                in_flight.remove(arg % in_flight.len());
            }
            5 if !delivered.is_empty() => {
                let (from, envelope) = delivered[arg % delivered.len()].clone();
                let before = sides[1 - from].sessions.to_bytes();
                let got = receive(&mut sides, from, &envelope, &mut rng);
                assert_eq!(got, Err(DecryptError::DuplicateMessage));
                assert_eq!(*sides[1 - from].sessions.to_bytes(), *before);
            }
            6 if !in_flight.is_empty() => {
                let index = arg % in_flight.len();
                let (from, mut envelope, _) = in_flight[index].clone();
                let position = arg % envelope.ciphertext.len();
                envelope.ciphertext[position] ^= 1 << (byte % 8);
                let before = sides[1 - from].sessions.to_bytes();
                assert!(receive(&mut sides, from, &envelope, &mut rng).is_err());
                assert_eq!(*sides[1 - from].sessions.to_bytes(), *before, "state unchanged");
            }
            7 => {
                let side = &mut sides[arg % 2];
                let bytes = side.sessions.to_bytes();
                side.sessions = SessionRecord::from_bytes(&bytes).expect("state restores");
            }
            _ => {}
        }
    }
    while let Some((from, envelope, text)) = in_flight.pop() {
        let got = receive(&mut sides, from, &envelope, &mut rng);
        assert_eq!(got.as_deref(), Ok(text.as_str()));
    }
    for from in [0, 1, 0, 1] {
        let envelope = send(&mut sides, from, "final", &mut rng).expect("can send");
        assert_eq!(receive(&mut sides, from, &envelope, &mut rng).as_deref(), Ok("final"));
    }
}

fn send(sides: &mut [Side; 2], from: usize, text: &str, rng: &mut ChaCha20Rng) -> Option<Envelope> {
    let (sender, receiver) = pair(sides, from);
    if !sender.sessions.can_encrypt() {
        let opk = receiver.prekeys.one_time.first().map(OneTimePrekey::public);
        let bundle = PrekeyBundle::new(
            receiver.user.clone(),
            *receiver.identity.public(),
            *receiver.prekeys.signed.public(),
            opk,
        )
        .expect("own bundle verifies");
        let local = LocalParty { user: &sender.user, identity: &sender.identity };
        sender.sessions.promote(Session::initiate(local, &receiver.user, &bundle, rng).ok()?);
    }
    let record = Record::text(text, 0, 1, 0, MessageDigest::NONE);
    let (envelope, _) = sender.sessions.encrypt(&record).ok()?;
    Some(Envelope::from_json(&envelope.to_json()).expect("own envelope decodes"))
}

fn receive(
    sides: &mut [Side; 2],
    from: usize,
    envelope: &Envelope,
    rng: &mut ChaCha20Rng,
) -> Result<String, DecryptError> {
    let (sender, receiver) = pair(sides, from);
    let local = LocalParty { user: &receiver.user, identity: &receiver.identity };
    let decrypted =
        receiver.sessions.decrypt(local, &sender.user, envelope, &receiver.prekeys, rng)?;
    if let Some(id) = decrypted.used_one_time_prekey {
        receiver.prekeys.one_time.retain(|k| k.id() != id);
    }
    Ok(decrypted.record.as_text().unwrap_or_default().to_owned())
}

fn pair(sides: &mut [Side; 2], from: usize) -> (&mut Side, &mut Side) {
    let (a, b) = sides.split_at_mut(1);
    if from == 0 { (&mut a[0], &mut b[0]) } else { (&mut b[0], &mut a[0]) }
}
