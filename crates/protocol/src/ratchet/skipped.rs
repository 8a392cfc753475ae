//! Message keys of messages not yet received (§6.4): stored when a header skips ahead, used when
//! the late message arrives, bounded so a hostile peer cannot make a session grow without end.

use std::collections::VecDeque;

use crate::kdf::MessageKey;
use crate::keys::DhPublicKey;

/// Most message keys one header may make the receiver skip in one chain.
pub const MAX_SKIP: u32 = 1_000;
/// Most skipped keys a session stores; beyond it the oldest are evicted.
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// One stored key.
#[derive(Clone)]
pub(crate) struct SkippedKey {
    /// The remote ratchet key of the chain the message belongs to.
    pub(crate) ratchet_key: DhPublicKey,
    /// The message's number in that chain.
    pub(crate) n: u32,
    /// Its message key.
    pub(crate) key: MessageKey,
}

/// The stored keys, oldest first.
#[derive(Clone, Default)]
pub(crate) struct SkippedKeys(pub(crate) VecDeque<SkippedKey>);

impl SkippedKeys {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn find(&self, ratchet_key: &DhPublicKey, n: u32) -> Option<usize> {
        self.0.iter().position(|k| k.n == n && &k.ratchet_key == ratchet_key)
    }

    pub(crate) fn get(&self, index: usize) -> Option<&MessageKey> {
        self.0.get(index).map(|k| &k.key)
    }

    pub(crate) fn remove(&mut self, index: usize) {
        self.0.remove(index);
    }

    /// Stores a key, evicting the oldest when full.
    pub(crate) fn push(&mut self, ratchet_key: DhPublicKey, n: u32, key: MessageKey) {
        if self.0.len() == MAX_SKIPPED_KEYS {
            self.0.pop_front();
        }
        self.0.push_back(SkippedKey { ratchet_key, n, key });
    }
}
