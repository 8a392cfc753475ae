//! Scripted Alice/Bob conversations and the core's share of the adversarial cases (DESIGN §8):
//! tampered ciphertext, header and prekey message; unknown key-share; MAX_SKIP; duplicates;
//! replayed prekey messages; saving and restoring; simultaneous initiation; key changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use sotto_protocol::keys::DhKeyPair;
use sotto_protocol::ratchet::{MAX_SKIP, MAX_SKIPPED_KEYS};
use sotto_protocol::session::{LocalParty, Session};
use sotto_protocol::store::{IdentityChange, PrekeyStore, SessionStore};
use sotto_protocol::{
    DecryptError, Envelope, IdentityKeyPair, PrekeyBundle, PublicIdentity, SafetyNumber,
    SessionRecord, SignedPrekey, UserId,
};
use support::{Device, rng};

fn pair(seed: u64) -> (Device, Device, rand_chacha::ChaCha20Rng) {
    let mut rng = rng(seed);
    let alice = Device::new("alice", &mut rng);
    let bob = Device::new("bob", &mut rng);
    (alice, bob, rng)
}

#[test]
fn alice_and_bob_talk_both_ways() {
    let (mut alice, mut bob, mut rng) = pair(1);
    for round in 0..5 {
        for i in 0..3 {
            let text = format!("alice {round}.{i}");
            let envelope = alice.send(&mut bob, &text, &mut rng);
            assert_eq!(envelope.is_prekey_message(), round == 0, "prekey header until a reply");
            let (got, _) = bob.receive(&alice.user.clone(), &envelope, &mut rng).unwrap();
            assert_eq!(got, text);
        }
        for i in 0..2 {
            let text = format!("bob {round}.{i}");
            let envelope = bob.send(&mut alice, &text, &mut rng);
            assert!(!envelope.is_prekey_message());
            let (got, _) = alice.receive(&bob.user.clone(), &envelope, &mut rng).unwrap();
            assert_eq!(got, text);
        }
    }
}

#[test]
fn first_message_uses_a_one_time_prekey_and_consumes_it_only_on_success() {
    let (mut alice, mut bob, mut rng) = pair(2);
    let envelope = alice.send(&mut bob, "hello", &mut rng);
    let opk = envelope.prekey.unwrap().one_time_prekey_id.unwrap();
    assert!(bob.prekeys.one_time_prekey(opk).unwrap().is_some());
    bob.receive(&alice.user.clone(), &envelope, &mut rng).unwrap();
    assert!(bob.prekeys.one_time_prekey(opk).unwrap().is_none(), "used prekey deleted");
}

#[test]
fn works_without_one_time_prekeys() {
    let (mut alice, mut bob, mut rng) = pair(3);
    bob.one_time.clear();
    let envelope = alice.send(&mut bob, "no opk", &mut rng);
    assert_eq!(envelope.prekey.unwrap().one_time_prekey_id, None);
    assert_eq!(bob.receive(&alice.user.clone(), &envelope, &mut rng).unwrap().0, "no opk");
}

#[test]
fn out_of_order_within_and_across_ratchet_steps() {
    let (mut alice, mut bob, mut rng) = pair(4);
    let a = alice.user.clone();
    let b = bob.user.clone();
    let first: Vec<Envelope> =
        (0..4).map(|i| alice.send(&mut bob, &format!("a1-{i}"), &mut rng)).collect();
    // Bob gets the last first, then the others in reverse.
    for i in (0..4).rev() {
        assert_eq!(bob.receive(&a, &first[i], &mut rng).unwrap().0, format!("a1-{i}"));
    }
    let reply = bob.send(&mut alice, "b1", &mut rng);
    alice.receive(&b, &reply, &mut rng).unwrap();
    let second: Vec<Envelope> =
        (0..3).map(|i| alice.send(&mut bob, &format!("a2-{i}"), &mut rng)).collect();
    bob.receive(&a, &second[2], &mut rng).unwrap();
    let reply = bob.send(&mut alice, "b2", &mut rng);
    alice.receive(&b, &reply, &mut rng).unwrap();
    let third = alice.send(&mut bob, "a3-0", &mut rng);
    bob.receive(&a, &third, &mut rng).unwrap();
    // Messages from two chains ago still decrypt.
    assert_eq!(bob.receive(&a, &second[0], &mut rng).unwrap().0, "a2-0");
    assert_eq!(bob.receive(&a, &second[1], &mut rng).unwrap().0, "a2-1");
}

#[test]
fn duplicates_are_refused_with_their_own_error_and_change_nothing() {
    let (mut alice, mut bob, mut rng) = pair(5);
    let a = alice.user.clone();
    let first = alice.send(&mut bob, "one", &mut rng);
    let second = alice.send(&mut bob, "two", &mut rng);
    bob.receive(&a, &second, &mut rng).unwrap();
    bob.receive(&a, &first, &mut rng).unwrap();
    for envelope in [&first, &second] {
        let before = bob.session_bytes(&a);
        assert_eq!(bob.receive(&a, envelope, &mut rng), Err(DecryptError::DuplicateMessage));
        assert_eq!(bob.session_bytes(&a), before);
    }
    // After a DH step, the old chain's messages are still recognised as duplicates.
    let reply = bob.send(&mut alice, "reply", &mut rng);
    alice.receive(&bob.user.clone(), &reply, &mut rng).unwrap();
    let next = alice.send(&mut bob, "three", &mut rng);
    bob.receive(&a, &next, &mut rng).unwrap();
    assert_eq!(bob.receive(&a, &first, &mut rng), Err(DecryptError::DuplicateMessage));
}

#[test]
fn a_replayed_prekey_message_is_a_duplicate_even_after_the_reply() {
    let (mut alice, mut bob, mut rng) = pair(6);
    let a = alice.user.clone();
    let prekey_message = alice.send(&mut bob, "hello", &mut rng);
    bob.receive(&a, &prekey_message, &mut rng).unwrap();
    let reply = bob.send(&mut alice, "hi", &mut rng);
    alice.receive(&bob.user.clone(), &reply, &mut rng).unwrap();
    let before = bob.session_bytes(&a);
    assert_eq!(bob.receive(&a, &prekey_message, &mut rng), Err(DecryptError::DuplicateMessage));
    assert_eq!(bob.session_bytes(&a), before);
    // Replayed to a device that lost the session, it cannot start a new one either: the
    // one-time prekey is gone.
    bob.sessions = Default::default();
    let opk = prekey_message.prekey.unwrap().one_time_prekey_id.unwrap();
    assert_eq!(
        bob.receive(&a, &prekey_message, &mut rng),
        Err(DecryptError::UnknownOneTimePrekey(opk))
    );
}

fn assert_refused_without_change(
    bob: &mut Device,
    from: &UserId,
    envelope: &Envelope,
    expected: DecryptError,
    rng: &mut rand_chacha::ChaCha20Rng,
) {
    let before = bob.session_bytes(from);
    let one_time_left: Vec<bool> =
        (100..110).map(|id| bob.prekeys.one_time_prekey(id).unwrap().is_some()).collect();
    assert_eq!(bob.receive(from, envelope, rng), Err(expected));
    assert_eq!(bob.session_bytes(from), before, "session must be byte-identical");
    let after: Vec<bool> =
        (100..110).map(|id| bob.prekeys.one_time_prekey(id).unwrap().is_some()).collect();
    assert_eq!(after, one_time_left, "no one-time prekey consumed");
}

#[test]
fn tampered_ciphertext_header_and_prekey_message_change_nothing() {
    let (mut alice, mut bob, mut rng) = pair(7);
    let a = alice.user.clone();
    let first = alice.send(&mut bob, "first", &mut rng);

    // Tampered prekey messages: nothing created, no one-time prekey used.
    let mut tampered = first.clone();
    tampered.ciphertext[5] ^= 0x20;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.header.n = 1;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.header.pn = 7;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.prekey.as_mut().unwrap().base_key = *DhKeyPair::generate(&mut rng).public();
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.prekey.as_mut().unwrap().one_time_prekey_id = Some(101);
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.prekey.as_mut().unwrap().one_time_prekey_id = None;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.header.dh = *DhKeyPair::generate(&mut rng).public();
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = first.clone();
    tampered.ciphertext.truncate(64 + 16 - 1);
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );

    // The genuine message still works afterwards.
    assert_eq!(bob.receive(&a, &first, &mut rng).unwrap().0, "first");

    // Tampered ordinary messages, in-chain and across a DH step.
    let second = alice.send(&mut bob, "second", &mut rng);
    let mut tampered = second.clone();
    tampered.ciphertext[70] ^= 1;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = second.clone();
    tampered.header.n += 5;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    assert_eq!(bob.receive(&a, &second, &mut rng).unwrap().0, "second");

    let reply = bob.send(&mut alice, "reply", &mut rng);
    alice.receive(&bob.user.clone(), &reply, &mut rng).unwrap();
    let after_step = alice.send(&mut bob, "after step", &mut rng);
    let mut tampered = after_step.clone();
    tampered.ciphertext[0] ^= 1;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    let mut tampered = after_step.clone();
    tampered.header.pn += 1;
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    assert_eq!(bob.receive(&a, &after_step, &mut rng).unwrap().0, "after step");
}

#[test]
fn a_relay_lying_about_the_sender_fails_closed() {
    // Unknown key-share: the relay tells Bob the message is from someone else. The AD binds
    // Alice's user id, so Bob's derivation differs and nothing is accepted.
    let (mut alice, mut bob, mut rng) = pair(8);
    let envelope = alice.send(&mut bob, "from alice", &mut rng);
    let mallory = UserId::parse("mallory").unwrap();
    assert_refused_without_change(
        &mut bob,
        &mallory,
        &envelope,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
    assert!(bob.sessions.load_session(&mallory).unwrap().is_none());
    assert_eq!(bob.receive(&alice.user.clone(), &envelope, &mut rng).unwrap().0, "from alice");
}

#[test]
fn an_identity_re_signed_by_someone_else_fails_closed() {
    // Mallory takes Alice's IKd and binds it to her own IKs: the prekey header verifies, but the
    // AD (which holds both identity keys) no longer matches Alice's.
    let (mut alice, mut bob, mut rng) = pair(9);
    let envelope = alice.send(&mut bob, "hello", &mut rng);
    let mallory = IdentityKeyPair::generate(&mut rng);
    let prekey = envelope.prekey.unwrap();
    let forged = sotto_protocol::signing::identity_binding_message(
        mallory.public().signing_key(),
        prekey.identity.dh_key(),
    );
    let forged_identity = PublicIdentity::new(
        *mallory.public().signing_key(),
        *prekey.identity.dh_key(),
        mallory.sign(&forged),
    )
    .unwrap();
    let mut tampered = envelope.clone();
    tampered.prekey.as_mut().unwrap().identity = forged_identity;
    let a = alice.user.clone();
    assert_refused_without_change(
        &mut bob,
        &a,
        &tampered,
        DecryptError::DecryptionFailed,
        &mut rng,
    );
}

#[test]
fn bundles_with_bad_signatures_are_refused() {
    let mut rng = rng(10);
    let bob = IdentityKeyPair::generate(&mut rng);
    let mallory = IdentityKeyPair::generate(&mut rng);
    let spk_by_mallory = SignedPrekey::generate(&mallory, 1, 0, &mut rng);
    let user = UserId::parse("bob").unwrap();
    assert!(
        PrekeyBundle::new(user.clone(), *bob.public(), *spk_by_mallory.public(), None).is_err()
    );
    let good = SignedPrekey::generate(&bob, 1, 0, &mut rng);
    let mut older = *good.public();
    older.created_at += 1;
    assert!(PrekeyBundle::new(user.clone(), *bob.public(), older, None).is_err());
    let mut swapped = *good.public();
    swapped.key = *DhKeyPair::generate(&mut rng).public();
    assert!(PrekeyBundle::new(user, *bob.public(), swapped, None).is_err());
}

#[test]
fn a_bundle_for_someone_else_is_refused() {
    let (mut alice, mut bob, mut rng) = pair(11);
    let bundle = bob.bundle();
    let carol = UserId::parse("carol").unwrap();
    let local = LocalParty { user: &alice.user, identity: alice.identity() };
    assert!(Session::initiate(local, &carol, &bundle, &mut rng).is_err());
    let _ = &mut alice;
}

#[test]
fn max_skip_is_enforced_and_the_state_is_untouched() {
    let (mut alice, mut bob, mut rng) = pair(12);
    let a = alice.user.clone();
    let first = alice.send(&mut bob, "start", &mut rng);
    bob.receive(&a, &first, &mut rng).unwrap();
    let mut skipped = Vec::new();
    for i in 0..=MAX_SKIP {
        skipped.push(alice.send(&mut bob, &format!("m{i}"), &mut rng));
    }
    let too_far = alice.send(&mut bob, "too far", &mut rng);
    assert_refused_without_change(&mut bob, &a, &too_far, DecryptError::TooManySkipped, &mut rng);
    // Exactly MAX_SKIP skipped keys is allowed.
    let last = skipped.last().unwrap();
    assert_eq!(bob.receive(&a, last, &mut rng).unwrap().0, format!("m{MAX_SKIP}"));
    assert_eq!(
        bob.session_record(&a).current().unwrap().ratchet().skipped_keys(),
        MAX_SKIP as usize
    );
    assert_eq!(bob.receive(&a, &skipped[0], &mut rng).unwrap().0, "m0");
}

#[test]
fn stored_skipped_keys_are_capped_and_the_oldest_evicted() {
    let (mut alice, mut bob, mut rng) = pair(13);
    let a = alice.user.clone();
    let b = bob.user.clone();
    let mut oldest = None;
    for chain in 0..3 {
        // 900 messages Bob never sees, then one he does.
        let mut lost = Vec::new();
        for i in 0..900 {
            lost.push(alice.send(&mut bob, &format!("lost {chain}.{i}"), &mut rng));
        }
        let seen = alice.send(&mut bob, "seen", &mut rng);
        bob.receive(&a, &seen, &mut rng).unwrap();
        let reply = bob.send(&mut alice, "ack", &mut rng);
        alice.receive(&b, &reply, &mut rng).unwrap();
        if chain == 0 {
            oldest = Some(lost.swap_remove(0));
        }
    }
    let record = bob.session_record(&a);
    assert_eq!(record.current().unwrap().ratchet().skipped_keys(), MAX_SKIPPED_KEYS);
    assert_eq!(
        bob.receive(&a, &oldest.unwrap(), &mut rng),
        Err(DecryptError::DuplicateMessage),
        "the evicted key is gone; the message counts as already handled"
    );
}

#[test]
fn sessions_survive_save_and_restore_at_every_step() {
    let (mut alice, mut bob, mut rng) = pair(14);
    let (a, b) = (alice.user.clone(), bob.user.clone());
    let mut pending = Vec::new();
    for i in 0..20 {
        // The in-memory store keeps serialised records, so every step is a real restore; also
        // check that a restore is exact.
        for (device, peer) in [(&alice, &b), (&bob, &a)] {
            let bytes = device.session_bytes(peer);
            if !bytes.is_empty() {
                let restored = SessionRecord::from_bytes(&bytes).unwrap();
                assert_eq!(restored.to_bytes().to_vec(), bytes);
            }
        }
        let envelope = if i % 3 == 2 {
            bob.send(&mut alice, &format!("b{i}"), &mut rng)
        } else {
            alice.send(&mut bob, &format!("a{i}"), &mut rng)
        };
        pending.push((i % 3 == 2, envelope, i));
        if i % 4 == 3 {
            for (from_bob, envelope, i) in pending.drain(..).rev() {
                let (receiver, from) = if from_bob { (&mut alice, &b) } else { (&mut bob, &a) };
                let text = receiver.receive(from, &envelope, &mut rng).unwrap().0;
                assert!(text.ends_with(&i.to_string()));
            }
        }
    }
}

#[test]
fn corrupt_or_unknown_session_state_is_refused() {
    let (mut alice, mut bob, mut rng) = pair(15);
    alice.send(&mut bob, "x", &mut rng);
    let bytes = alice.session_bytes(&bob.user);
    assert!(SessionRecord::from_bytes(&[]).is_err());
    assert!(SessionRecord::from_bytes(&[2]).is_err());
    assert!(SessionRecord::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(SessionRecord::from_bytes(&extra).is_err());
}

#[test]
fn simultaneous_initiation_converges() {
    let (mut alice, mut bob, mut rng) = pair(16);
    let (a, b) = (alice.user.clone(), bob.user.clone());
    // Both start a session before hearing from the other.
    let from_alice = alice.send(&mut bob, "alice first", &mut rng);
    let from_bob = bob.send(&mut alice, "bob first", &mut rng);
    assert!(from_alice.is_prekey_message() && from_bob.is_prekey_message());
    assert_eq!(bob.receive(&a, &from_alice, &mut rng).unwrap().0, "alice first");
    assert_eq!(alice.receive(&b, &from_bob, &mut rng).unwrap().0, "bob first");
    // Whatever each side now considers current, every later message arrives.
    for i in 0..6 {
        let envelope = alice.send(&mut bob, &format!("a{i}"), &mut rng);
        assert_eq!(bob.receive(&a, &envelope, &mut rng).unwrap().0, format!("a{i}"));
        let envelope = bob.send(&mut alice, &format!("b{i}"), &mut rng);
        assert_eq!(alice.receive(&b, &envelope, &mut rng).unwrap().0, format!("b{i}"));
    }
    // And they end up on the same session.
    let alice_base = *alice.session_record(&b).current().unwrap().base_key();
    let bob_base = *bob.session_record(&a).current().unwrap().base_key();
    assert_eq!(alice_base, bob_base);
}

#[test]
fn a_new_identity_is_reported_as_a_key_change() {
    let (mut alice, mut bob, mut rng) = pair(17);
    let (a, b) = (alice.user.clone(), bob.user.clone());
    let envelope = alice.send(&mut bob, "hi", &mut rng);
    assert_eq!(bob.receive(&a, &envelope, &mut rng).unwrap().1, IdentityChange::New);
    let envelope = alice.send(&mut bob, "again", &mut rng);
    assert_eq!(bob.receive(&a, &envelope, &mut rng).unwrap().1, IdentityChange::Unchanged);
    let before = SafetyNumber::compute(&a, alice.identity().public(), &b, bob.identity().public());

    // Alice loses her device and registers again with new keys.
    let mut new_alice = Device::new("alice", &mut rng);
    let envelope = new_alice.send(&mut bob, "new phone", &mut rng);
    let (text, change) = bob.receive(&a, &envelope, &mut rng).unwrap();
    assert_eq!((text.as_str(), change), ("new phone", IdentityChange::Changed));
    let after =
        SafetyNumber::compute(&a, new_alice.identity().public(), &b, bob.identity().public());
    assert_ne!(before, after);
    let _ = &mut alice;
}

/// Starting a session from a bundle whose identity is not the one already known for the peer
/// is a key change: refused, with nothing saved, until the user accepts the new identity.
#[test]
fn a_bundle_with_another_identity_is_not_encrypted_to() {
    use sotto_protocol::store::{self, IdentityStore, InMemorySessionStore, StoreEncryptError};
    let (mut alice, mut bob, mut rng) = pair(21);
    let b = bob.user.clone();
    let envelope = alice.send(&mut bob, "hi", &mut rng);
    bob.receive(&alice.user.clone(), &envelope, &mut rng).unwrap();

    // Alice's sessions are gone (cleared after a problem), and the relay serves a bundle for
    // "bob" with someone else's identity, correctly self-signed.
    alice.sessions = InMemorySessionStore::default();
    let mut mallory = Device::new("bob", &mut rng);
    let bundle = mallory.bundle();
    let record = alice.record("for bob's eyes");
    let refused = store::encrypt(
        &mut alice.identities,
        &mut alice.sessions,
        &b,
        Some(&bundle),
        &record,
        &mut rng,
    );
    assert!(matches!(refused, Err(StoreEncryptError::IdentityChanged)), "{refused:?}");
    let known = alice.identities.peer_identity(&b).unwrap().unwrap();
    assert!(known.same_keys(bob.identity().public()), "the known identity is kept");
    assert!(alice.sessions.load_session(&b).unwrap().is_none(), "no session started");
    // The store shows whose sessions it keeps, never their keys.
    assert_eq!(format!("{:?}", alice.sessions), "InMemorySessionStore { peers: [] }");
}

#[test]
fn unknown_signed_prekey_is_reported() {
    let (mut alice, mut bob, mut rng) = pair(18);
    let mut envelope = alice.send(&mut bob, "hi", &mut rng);
    envelope.prekey.as_mut().unwrap().signed_prekey_id = 99;
    assert_refused_without_change(
        &mut bob,
        &alice.user.clone(),
        &envelope,
        DecryptError::UnknownSignedPrekey(99),
        &mut rng,
    );
}

#[test]
fn an_ordinary_message_without_a_session_is_refused() {
    let (mut alice, mut bob, mut rng) = pair(19);
    let mut envelope = alice.send(&mut bob, "hi", &mut rng);
    envelope.prekey = None;
    assert_refused_without_change(
        &mut bob,
        &alice.user.clone(),
        &envelope,
        DecryptError::NoSession,
        &mut rng,
    );
}

#[test]
fn safety_numbers_match_on_both_sides_and_scan() {
    let mut rng = rng(20);
    let (a, b) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
    let ida = IdentityKeyPair::generate(&mut rng);
    let idb = IdentityKeyPair::generate(&mut rng);
    let seen_by_alice = SafetyNumber::compute(&a, ida.public(), &b, idb.public());
    let seen_by_bob = SafetyNumber::compute(&b, idb.public(), &a, ida.public());
    assert_eq!(seen_by_alice, seen_by_bob);
    assert_eq!(seen_by_alice.digits().len(), 60);
    assert!(seen_by_alice.digits().bytes().all(|d| d.is_ascii_digit()));
    assert_eq!(seen_by_alice.groups().count(), 12);
    assert!(seen_by_bob.matches_qr(seen_by_alice.qr_payload()));
    let mut wrong = *seen_by_alice.qr_payload();
    wrong[40] ^= 1;
    assert!(!seen_by_bob.matches_qr(&wrong));
    assert!(!seen_by_bob.matches_qr(&wrong[..64]));
    // A different user id with the same keys gives a different number.
    let c = UserId::parse("carol").unwrap();
    assert_ne!(SafetyNumber::compute(&c, ida.public(), &b, idb.public()), seen_by_alice);
}
