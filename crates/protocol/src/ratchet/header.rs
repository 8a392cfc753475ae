//! The message header (§6.2): the sender's ratchet key and two counters, sent in clear and
//! authenticated as part of the AEAD associated data.

use crate::keys::{DhPublicKey, PUBLIC_KEY_LEN};
use crate::{PROTOCOL_VERSION, SUITE_P256};

/// Length of [`Header::encode`]'s output.
pub const HEADER_LEN: usize = 2 + PUBLIC_KEY_LEN + 4 + 4;

/// A Double Ratchet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub dh: DhPublicKey,
    /// How many messages the sender sent in its previous sending chain.
    pub pn: u32,
    /// This message's number in the current sending chain, from 0.
    pub n: u32,
}

impl Header {
    /// `version ‖ suite ‖ dh ‖ pn ‖ n`, the form authenticated by the AEAD.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = SUITE_P256;
        out[2..2 + PUBLIC_KEY_LEN].copy_from_slice(self.dh.as_bytes());
        out[2 + PUBLIC_KEY_LEN..2 + PUBLIC_KEY_LEN + 4].copy_from_slice(&self.pn.to_be_bytes());
        out[2 + PUBLIC_KEY_LEN + 4..].copy_from_slice(&self.n.to_be_bytes());
        out
    }
}
