//! Property test: random conversations with sends, deliveries in any order, drops, duplicate
//! deliveries and save/restore cycles. Both sides must converge, and every delivered message
//! must decrypt exactly once (a second delivery is a `DuplicateMessage`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use proptest::prelude::*;
use sotto_protocol::store::SessionStore;
use sotto_protocol::{DecryptError, Envelope, SessionRecord};
use support::{Device, rng};

#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob (false) sends a message.
    Send(bool),
    /// Deliver the pending message at this position (modulo the number pending).
    Deliver(usize),
    /// Drop a pending message for good.
    Drop(usize),
    /// Deliver an already delivered message again.
    Redeliver(usize),
    /// Serialise and restore one side's session record.
    Restore(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Send),
        4 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Redeliver),
        1 => any::<bool>().prop_map(Op::Restore),
    ]
}

struct InFlight {
    from_alice: bool,
    envelope: Envelope,
    text: String,
}

fn deliver(
    alice: &mut Device,
    bob: &mut Device,
    message: &InFlight,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Result<String, DecryptError> {
    let (receiver, sender) =
        if message.from_alice { (bob, &alice.user) } else { (alice, &bob.user) };
    let sender = sender.clone();
    receiver.receive(&sender, &message.envelope, rng).map(|(text, _)| text)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_conversations_converge(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        let mut rng = rng(seed);
        let mut alice = Device::new("alice", &mut rng);
        let mut bob = Device::new("bob", &mut rng);
        let mut pending: Vec<InFlight> = Vec::new();
        let mut delivered: Vec<InFlight> = Vec::new();
        let mut counter = 0;
        for op in ops {
            match op {
                Op::Send(from_alice) => {
                    counter += 1;
                    let text = format!("message {counter}");
                    let envelope = if from_alice {
                        alice.send(&mut bob, &text, &mut rng)
                    } else {
                        bob.send(&mut alice, &text, &mut rng)
                    };
                    pending.push(InFlight { from_alice, envelope, text });
                }
                Op::Deliver(i) if !pending.is_empty() => {
                    let message = pending.remove(i % pending.len());
                    let got = deliver(&mut alice, &mut bob, &message, &mut rng);
                    prop_assert_eq!(got, Ok(message.text.clone()));
                    delivered.push(message);
                }
                Op::Drop(i) if !pending.is_empty() => {
                    pending.remove(i % pending.len());
                }
                Op::Redeliver(i) if !delivered.is_empty() => {
                    let message = &delivered[i % delivered.len()];
                    let got = deliver(&mut alice, &mut bob, message, &mut rng);
                    prop_assert_eq!(got, Err(DecryptError::DuplicateMessage));
                }
                Op::Restore(alice_side) => {
                    let (device, peer) =
                        if alice_side { (&mut alice, bob.user.clone()) } else { (&mut bob, alice.user.clone()) };
                    if let Some(record) = device.sessions.load_session(&peer).unwrap() {
                        let bytes = record.to_bytes();
                        let restored = SessionRecord::from_bytes(&bytes).unwrap();
                        prop_assert_eq!(&*restored.to_bytes(), &*bytes);
                        device.sessions.store_session(&peer, &restored).unwrap();
                    }
                }
                _ => {}
            }
        }
        // Everything still in flight arrives, in reverse order for good measure.
        while let Some(message) = pending.pop() {
            let got = deliver(&mut alice, &mut bob, &message, &mut rng);
            prop_assert_eq!(got, Ok(message.text.clone()));
        }
        // And the two sides still talk, both ways, several rounds.
        for round in 0..3 {
            let text = format!("final a{round}");
            let envelope = alice.send(&mut bob, &text, &mut rng);
            prop_assert_eq!(bob.receive(&alice.user.clone(), &envelope, &mut rng).map(|r| r.0), Ok(text));
            let text = format!("final b{round}");
            let envelope = bob.send(&mut alice, &text, &mut rng);
            prop_assert_eq!(alice.receive(&bob.user.clone(), &envelope, &mut rng).map(|r| r.0), Ok(text));
        }
    }
}
