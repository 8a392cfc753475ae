//! Alice and Bob, in memory: a bundle, a prekey message, replies across DH ratchet steps, a
//! late message, and the safety number both would compare. Prints what happens, never keys.
//!
//! ```text
//! cargo run -p sotto-protocol --example conversation
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::record::MessageDigest;
use sotto_protocol::store::{
    self, InMemoryIdentityStore, InMemoryPrekeyStore, InMemorySessionStore,
};
use sotto_protocol::{IdentityKeyPair, PrekeyBundle, Record, SafetyNumber, SignedPrekey, UserId};

fn main() {
    // A real client uses the operating system's generator; a seed keeps the example repeatable.
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();

    let mut alice_ids =
        InMemoryIdentityStore::new(alice.clone(), IdentityKeyPair::generate(&mut rng));
    let mut alice_sessions = InMemorySessionStore::default();
    let mut alice_prekeys = InMemoryPrekeyStore::default();

    let bob_identity = IdentityKeyPair::generate(&mut rng);
    let bob_spk = SignedPrekey::generate(&bob_identity, 1, 1_767_225_600, &mut rng);
    let bob_opk = OneTimePrekey::generate(1, &mut rng);
    let bundle = PrekeyBundle::new(
        bob.clone(),
        *bob_identity.public(),
        *bob_spk.public(),
        Some(bob_opk.public()),
    )
    .unwrap();
    let mut bob_ids = InMemoryIdentityStore::new(bob.clone(), bob_identity.clone());
    let mut bob_sessions = InMemorySessionStore::default();
    let mut bob_prekeys = InMemoryPrekeyStore::default();
    bob_prekeys.add_signed_prekey(bob_spk);
    bob_prekeys.add_one_time_prekey(bob_opk);
    println!("bob published a bundle, {} bytes of JSON", bundle.to_json().len());

    let text = |t: &str, n: u64| Record::text(t, 1_767_225_600_000 + n, n, 0, MessageDigest::NONE);
    let (first, _) = store::encrypt(
        &mut alice_ids,
        &mut alice_sessions,
        &bob,
        Some(&bundle),
        &text("Hi Bob!", 1),
        &mut rng,
    )
    .unwrap();
    println!("alice -> bob: prekey message, {} bytes of JSON", first.to_json().len());
    let (late, _) = store::encrypt(
        &mut alice_ids,
        &mut alice_sessions,
        &bob,
        None,
        &text("(this one arrives late)", 2),
        &mut rng,
    )
    .unwrap();

    let (got, change) =
        store::decrypt(&mut bob_ids, &mut bob_prekeys, &mut bob_sessions, &alice, &first, &mut rng)
            .unwrap();
    println!(
        "bob reads {:?} ({change:?} identity), one-time prekey used: {:?}",
        got.record.as_text().unwrap(),
        got.used_one_time_prekey
    );

    let (reply, _) = store::encrypt(
        &mut bob_ids,
        &mut bob_sessions,
        &alice,
        None,
        &text("Hi Alice!", 1),
        &mut rng,
    )
    .unwrap();
    let (got, _) = store::decrypt(
        &mut alice_ids,
        &mut alice_prekeys,
        &mut alice_sessions,
        &bob,
        &reply,
        &mut rng,
    )
    .unwrap();
    println!("alice reads {:?} after a DH ratchet step", got.record.as_text().unwrap());

    let (got, _) =
        store::decrypt(&mut bob_ids, &mut bob_prekeys, &mut bob_sessions, &alice, &late, &mut rng)
            .unwrap();
    println!("bob reads the late message {:?} from a skipped key", got.record.as_text().unwrap());
    let again =
        store::decrypt(&mut bob_ids, &mut bob_prekeys, &mut bob_sessions, &alice, &late, &mut rng);
    println!("delivering it again: {}", again.unwrap_err());

    use sotto_protocol::store::IdentityStore;
    let number = SafetyNumber::compute(
        &alice,
        alice_ids.local_identity().public(),
        &bob,
        bob_identity.public(),
    );
    println!("safety number both see:\n  {}", number.grouped());
}
