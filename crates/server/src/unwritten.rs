//! Messages pushed to their recipient before they were written (the queue writer's
//! write-behind, see `delivery`).
//!
//! A message for a recipient connected to this node is pushed at once and held here for
//! `Config::write_behind`. When the recipient acknowledges it in that time, which a connected
//! client does within milliseconds, the message is never written: no insert into the queue's
//! table and two indexes, no delete from all three, no log pages, no share of a flush. What
//! is not acknowledged in time is written like any other message. Its sender hears "stored"
//! only once the message is on disk or acknowledged, so a crash loses nothing the sender
//! believes stored: it sends again what was never answered, and a recipient that already has
//! it drops the copy by its ratchet key.
//!
//! Held messages keep the queue's order for each recipient: a recipient's messages are held
//! only while every earlier one is held or written, so what is written of them is always the
//! oldest part, and a socket that catches up reads the queue and then the held rest.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::state::SendCounts;
use crate::storage::NewMessage;

/// Most messages held at once; the oldest beyond are written.
pub(crate) const MAX_HELD: usize = 16_384;
/// Most envelope bytes held at once; the oldest beyond are written.
pub(crate) const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// A message pushed and not yet written, and what waits for it.
#[derive(Debug)]
pub(crate) struct Held<T> {
    /// The message, with the id it was pushed under.
    pub message: NewMessage,
    /// Whoever waits for it to be stored or acknowledged (the sender's answer).
    pub ticket: T,
    /// When it was pushed.
    pub pushed: Instant,
    /// Its sender and client id, hashed (`Relay::send_key`).
    pub send: u64,
}

impl<T> Held<T> {
    fn id(&self) -> i64 {
        self.message.id.unwrap_or_default()
    }

    fn bytes(&self) -> usize {
        self.message.envelope.get().len()
    }
}

/// The held messages, by id (oldest first).
#[derive(Debug)]
pub(crate) struct Unwritten<T> {
    messages: BTreeMap<i64, Held<T>>,
    bytes: usize,
    sends: SendCounts,
    /// How many are held for each recipient, so that looking for a recipient's messages costs
    /// nothing when there are none (the usual case for a message stored the usual way).
    per_recipient: HashMap<String, usize>,
}

impl<T> Default for Unwritten<T> {
    fn default() -> Self {
        Self {
            messages: BTreeMap::new(),
            bytes: 0,
            sends: SendCounts::default(),
            per_recipient: HashMap::new(),
        }
    }
}

impl<T> Unwritten<T> {
    /// How many are held.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether none is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Holds a pushed message (it carries its id).
    pub(crate) fn hold(&mut self, held: Held<T>) {
        self.bytes += held.bytes();
        self.sends.add(held.send);
        match self.per_recipient.get_mut(held.message.recipient.as_str()) {
            Some(count) => *count += 1,
            None => {
                self.per_recipient.insert(held.message.recipient.clone(), 1);
            }
        }
        if let Some(replaced) = self.messages.insert(held.id(), held) {
            self.forget(&replaced);
        }
    }

    fn forget(&mut self, held: &Held<T>) {
        self.bytes -= held.bytes();
        self.sends.remove(held.send);
        let recipient = held.message.recipient.as_str();
        if let Some(count) = self.per_recipient.get_mut(recipient) {
            *count -= 1;
            if *count == 0 {
                self.per_recipient.remove(recipient);
            }
        }
    }

    fn remove(&mut self, id: i64) -> Option<Held<T>> {
        let held = self.messages.remove(&id)?;
        self.forget(&held);
        Some(held)
    }

    /// Whether a held message is this send (a resend of it must not be pushed again).
    pub(crate) fn holds_send(&self, send: u64) -> bool {
        self.sends.contains(send)
    }

    /// Whether `id` is held for `recipient` (whose acknowledgement would take it).
    pub(crate) fn holds(&self, recipient: &str, id: i64) -> bool {
        self.messages.get(&id).is_some_and(|held| held.message.recipient == recipient)
    }

    /// How many are held for `recipient`.
    pub(crate) fn held_for(&self, recipient: &str) -> usize {
        self.per_recipient.get(recipient).copied().unwrap_or(0)
    }

    /// Takes the message `id` if it is held for `recipient`: its acknowledgement. Someone
    /// else's acknowledgement of it changes nothing.
    pub(crate) fn acknowledge(&mut self, recipient: &str, id: i64) -> Option<Held<T>> {
        match self.messages.get(&id) {
            Some(held) if held.message.recipient == recipient => self.remove(id),
            _ => None,
        }
    }

    /// Takes every message held for `recipient`, oldest first (to be written before anything
    /// newer for them).
    pub(crate) fn take_recipient(&mut self, recipient: &str) -> Vec<Held<T>> {
        if !self.per_recipient.contains_key(recipient) {
            return Vec::new();
        }
        let ids: Vec<i64> = self
            .messages
            .values()
            .filter(|held| held.message.recipient == recipient)
            .map(Held::id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Marks the client ids of the messages held from `sender` received before
    /// `registered_at`: its id has been registered anew then, and what its earlier holder sent
    /// is not the new holder's (`crate::storage::earlier_holder_mark`). Their send keys stay: a
    /// send of the new holder with the same client id only looks like a possible resend, and
    /// is stored the careful way.
    pub(crate) fn mark_sender(&mut self, sender: &str, registered_at: i64) {
        let mark = crate::storage::earlier_holder_mark(registered_at);
        let earlier = |held: &&mut Held<T>| {
            held.message.sender == sender && held.message.created_at < registered_at
        };
        for held in self.messages.values_mut().filter(earlier) {
            held.message.client_id.insert_str(0, &mark);
        }
    }

    /// Takes, oldest first, the messages held `wait` or longer at `now`, and the oldest beyond
    /// [`MAX_HELD`] and [`MAX_HELD_BYTES`].
    pub(crate) fn take_due(&mut self, now: Instant, wait: Duration) -> Vec<Held<T>> {
        let mut due = Vec::new();
        loop {
            let over = self.messages.len() > MAX_HELD || self.bytes > MAX_HELD_BYTES;
            let Some(entry) = self.messages.first_entry() else { break };
            if !over && now.saturating_duration_since(entry.get().pushed) < wait {
                break;
            }
            let held = entry.remove();
            self.forget(&held);
            due.push(held);
        }
        due
    }

    /// Takes them all, oldest first (shutting down).
    pub(crate) fn take_all(&mut self) -> Vec<Held<T>> {
        let all = std::mem::take(&mut self.messages);
        self.bytes = 0;
        self.sends = SendCounts::default();
        self.per_recipient.clear();
        all.into_values().collect()
    }

    /// When the oldest is due to be written, `wait` after it was pushed.
    pub(crate) fn next_due(&self, wait: Duration) -> Option<Instant> {
        self.messages.first_key_value().map(|(_, held)| held.pushed + wait)
    }

    /// The messages held for `recipient` with ids above `after`, oldest first.
    pub(crate) fn for_recipient(
        &self,
        recipient: &str,
        after: i64,
    ) -> impl Iterator<Item = &Held<T>> {
        let any = self.per_recipient.contains_key(recipient);
        any.then(|| self.messages.range(after.saturating_add(1)..))
            .into_iter()
            .flatten()
            .map(|(_, held)| held)
            .filter(move |held| held.message.recipient == recipient)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::value::RawValue;

    use super::*;

    fn held(id: i64, recipient: &str, send: u64, pushed: Instant) -> Held<u32> {
        Held {
            message: NewMessage {
                id: Some(id),
                recipient: recipient.into(),
                sender: "alice".into(),
                client_id: format!("c{send}"),
                envelope: RawValue::from_string(format!("\"{}\"", "x".repeat(10))).unwrap(),
                created_at: 1,
            },
            ticket: 0,
            pushed,
            send,
        }
    }

    #[test]
    fn only_the_recipient_acknowledges_and_the_send_is_forgotten_then() {
        let now = Instant::now();
        let mut unwritten = Unwritten::default();
        unwritten.hold(held(1, "bob", 11, now));
        assert!(unwritten.holds_send(11));
        assert!(unwritten.acknowledge("carol", 1).is_none());
        assert!(unwritten.holds("bob", 1) && !unwritten.holds("carol", 1));
        assert_eq!((unwritten.held_for("bob"), unwritten.held_for("carol")), (1, 0));
        assert_eq!(unwritten.acknowledge("bob", 1).unwrap().message.id, Some(1));
        assert!(!unwritten.holds_send(11));
        assert!(unwritten.is_empty());
        assert_eq!(unwritten.bytes, 0);
        assert!(unwritten.per_recipient.is_empty());
        assert!(unwritten.take_recipient("bob").is_empty());
    }

    #[test]
    fn due_messages_come_oldest_first_and_the_rest_wait() {
        let start = Instant::now();
        let wait = Duration::from_millis(50);
        let mut unwritten = Unwritten::default();
        unwritten.hold(held(1, "bob", 1, start));
        unwritten.hold(held(2, "carol", 2, start + Duration::from_millis(10)));
        unwritten.hold(held(3, "bob", 3, start + Duration::from_millis(40)));
        assert_eq!(unwritten.next_due(wait), Some(start + wait));
        assert!(unwritten.take_due(start + Duration::from_millis(49), wait).is_empty());
        let due: Vec<i64> = unwritten
            .take_due(start + Duration::from_millis(60), wait)
            .iter()
            .map(Held::id)
            .collect();
        assert_eq!(due, [1, 2]);
        assert_eq!(unwritten.len(), 1);
        assert_eq!(unwritten.next_due(wait), Some(start + Duration::from_millis(90)));
    }

    #[test]
    fn more_than_the_cap_are_due_at_once() {
        let now = Instant::now();
        let mut unwritten = Unwritten::default();
        for id in 0..(MAX_HELD as i64 + 3) {
            unwritten.hold(held(id, "bob", id as u64, now));
        }
        let due = unwritten.take_due(now, Duration::from_secs(60));
        assert_eq!(due.iter().map(Held::id).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(unwritten.len(), MAX_HELD);
    }

    #[test]
    fn a_recipients_messages_are_taken_and_listed_in_order() {
        let now = Instant::now();
        let mut unwritten = Unwritten::default();
        for (id, to) in [(5, "bob"), (6, "carol"), (7, "bob"), (8, "bob")] {
            unwritten.hold(held(id, to, id as u64, now));
        }
        let listed: Vec<i64> = unwritten.for_recipient("bob", 5).map(Held::id).collect();
        assert_eq!(listed, [7, 8]);
        let taken: Vec<i64> = unwritten.take_recipient("bob").iter().map(Held::id).collect();
        assert_eq!(taken, [5, 7, 8]);
        assert_eq!(unwritten.len(), 1);
        assert!(unwritten.holds_send(6) && !unwritten.holds_send(5));
        assert_eq!(unwritten.take_all().len(), 1);
        assert!(unwritten.is_empty() && !unwritten.holds_send(6));
        assert!(unwritten.per_recipient.is_empty());
        assert_eq!(unwritten.for_recipient("carol", 0).count(), 0);
    }
}
