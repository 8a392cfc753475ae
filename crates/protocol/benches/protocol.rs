//! Criterion benchmarks of the core's hot paths: X3DH, ratchet encrypt + decrypt of 256-byte
//! messages (in-chain and with a DH step each message), and safety numbers.
//!
//! ```text
//! cargo bench -p sotto-protocol
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::record::MessageDigest;
use sotto_protocol::session::{LocalParty, PrekeyLookup, Session};
use sotto_protocol::x3dh::{self, InitiatorKeys};
use sotto_protocol::{
    DhKeyPair, IdentityKeyPair, PrekeyBundle, Record, SafetyNumber, SessionRecord, SignedPrekey,
    UserId,
};

struct Keys {
    signed: SignedPrekey,
    one_time: OneTimePrekey,
}

impl PrekeyLookup for Keys {
    fn signed_prekey(&self, _: u32) -> Option<SignedPrekey> {
        Some(self.signed.clone())
    }
    fn one_time_prekey(&self, _: u32) -> Option<OneTimePrekey> {
        Some(self.one_time.clone())
    }
}

struct Pair {
    alice: UserId,
    bob: UserId,
    alice_id: IdentityKeyPair,
    bob_id: IdentityKeyPair,
    alice_sessions: SessionRecord,
    bob_sessions: SessionRecord,
    rng: ChaCha20Rng,
}

fn pair() -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let keys = Keys {
        signed: SignedPrekey::generate(&bob_id, 1, 0, &mut rng),
        one_time: OneTimePrekey::generate(1, &mut rng),
    };
    let bundle = PrekeyBundle::new(
        bob.clone(),
        *bob_id.public(),
        *keys.signed.public(),
        Some(keys.one_time.public()),
    )
    .unwrap();
    let mut alice_sessions = SessionRecord::new();
    let local = LocalParty { user: &alice, identity: &alice_id };
    alice_sessions.promote(Session::initiate(local, &bob, &bundle, &mut rng).unwrap());
    let mut bob_sessions = SessionRecord::new();
    let (first, _) = alice_sessions.encrypt(&text(1)).unwrap();
    let local = LocalParty { user: &bob, identity: &bob_id };
    bob_sessions.decrypt(local, &alice, &first, &keys, &mut rng).unwrap();
    // One reply so Alice stops sending prekey headers.
    let (reply, _) = bob_sessions.encrypt(&text(1)).unwrap();
    let local = LocalParty { user: &alice, identity: &alice_id };
    alice_sessions.decrypt(local, &bob, &reply, &keys, &mut rng).unwrap();
    Pair { alice, bob, alice_id, bob_id, alice_sessions, bob_sessions, rng }
}

/// A text record whose padded form is 256 bytes.
fn text(counter: u64) -> Record {
    Record::text(&"m".repeat(150), 1_767_225_600_000, counter, 0, MessageDigest::NONE)
}

fn bench_x3dh(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPrekey::generate(&bob_id, 1, 0, &mut rng);
    let opk = OneTimePrekey::generate(1, &mut rng);
    let bundle =
        PrekeyBundle::new(bob.clone(), *bob_id.public(), *spk.public(), Some(opk.public()))
            .unwrap();
    c.bench_function("x3dh initiate + respond (with one-time prekey)", |b| {
        b.iter(|| {
            let ephemeral = DhKeyPair::generate(&mut rng);
            let initiated = x3dh::initiate(&alice, &alice_id, &bob, &bundle, &ephemeral).unwrap();
            let keys = InitiatorKeys {
                user: &alice,
                identity: alice_id.public(),
                base_key: &initiated.base_key,
            };
            let responded = x3dh::respond(&bob, &bob_id, &spk, Some(&opk), &keys).unwrap();
            black_box(responded.shared_secret);
        })
    });
}

fn bench_ratchet(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratchet 256 B");
    group.throughput(Throughput::Elements(1));
    let Pair { alice, bob, bob_id, mut alice_sessions, mut bob_sessions, mut rng, .. } = pair();
    let keys = Keys {
        signed: SignedPrekey::generate(&bob_id, 9, 0, &mut rng),
        one_time: OneTimePrekey::generate(9, &mut rng),
    };
    let record = text(2);
    assert_eq!(record.encode().unwrap().len() + 1, 209);
    group.bench_function("encrypt + decrypt, in-chain", |b| {
        b.iter(|| {
            let (envelope, _) = alice_sessions.encrypt(&record).unwrap();
            let local = LocalParty { user: &bob, identity: &bob_id };
            black_box(bob_sessions.decrypt(local, &alice, &envelope, &keys, &mut rng).unwrap());
        })
    });

    let Pair { alice, bob, alice_id, bob_id, mut alice_sessions, mut bob_sessions, mut rng } =
        pair();
    group.bench_function("encrypt + decrypt, DH step every message", |b| {
        let mut alice_turn = true;
        b.iter(|| {
            if alice_turn {
                let (envelope, _) = alice_sessions.encrypt(&record).unwrap();
                let local = LocalParty { user: &bob, identity: &bob_id };
                black_box(bob_sessions.decrypt(local, &alice, &envelope, &keys, &mut rng).unwrap());
            } else {
                let (envelope, _) = bob_sessions.encrypt(&record).unwrap();
                let local = LocalParty { user: &alice, identity: &alice_id };
                black_box(alice_sessions.decrypt(local, &bob, &envelope, &keys, &mut rng).unwrap());
            }
            alice_turn = !alice_turn;
        })
    });
    group.bench_function("session record save + restore", |b| {
        b.iter(|| black_box(SessionRecord::from_bytes(&alice_sessions.to_bytes()).unwrap()))
    });
    group.finish();
}

fn bench_safety_number(c: &mut Criterion) {
    let Pair { alice, bob, alice_id, bob_id, .. } = pair();
    c.bench_function("safety number", |b| {
        b.iter(|| {
            black_box(SafetyNumber::compute(&alice, alice_id.public(), &bob, bob_id.public()))
        })
    });
}

criterion_group!(benches, bench_x3dh, bench_ratchet, bench_safety_number);
criterion_main!(benches);
