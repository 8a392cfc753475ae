//! Typed plaintext records and their padding (§7).
//!
//! A record is what the AEAD encrypts: a fixed header (kind, send time, the sender's running
//! counter, and what the sender last received from the peer) and a body, padded ISO/IEC 7816-4
//! style to a power-of-two bucket so the ciphertext length reveals little.

use core::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The record format version.
pub const RECORD_VERSION: u8 = 1;
/// Length of the fixed part before the body.
pub const RECORD_HEADER_LEN: usize = 58;
/// Smallest padded size.
pub const MIN_BUCKET: usize = 64;
/// Largest padded size; a record must be shorter than this.
pub const MAX_BUCKET: usize = 32 * 1024;
/// Longest encoded record (one byte is needed for the padding marker).
pub const MAX_RECORD_LEN: usize = MAX_BUCKET - 1;
/// Longest text body.
pub const MAX_TEXT_LEN: usize = MAX_RECORD_LEN - RECORD_HEADER_LEN;
/// Most counters one receipt may name.
pub const MAX_RECEIPT_COUNTERS: usize = 256;
/// Domain label of message digests.
pub const DIGEST_LABEL: &str = "Sotto v1 message digest";

const KIND_TEXT: u8 = 1;
const KIND_RECEIPT: u8 = 2;

/// Why a record could not be encoded, padded, unpadded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The encoded record would not fit the largest bucket.
    #[error("message too large")]
    RecordTooLarge,
    /// The padding is malformed or the padded length is not a bucket size.
    #[error("invalid padding")]
    InvalidPadding,
    /// A record version other than 1.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// Shorter than its fixed header, or a body shorter than it says.
    #[error("truncated record")]
    Truncated,
    /// Text that is empty or not UTF-8.
    #[error("invalid text")]
    InvalidText,
    /// A receipt with an unknown type, a bad count or trailing bytes.
    #[error("invalid receipt")]
    InvalidReceipt,
    /// A record of a kind this version cannot write.
    #[error("unsupported record kind {0}")]
    UnsupportedKind(u8),
}

/// A message digest (§7.3): SHA-256 over the label and the unpadded record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageDigest(pub [u8; 32]);

impl MessageDigest {
    /// The digest of "nothing received yet".
    pub const NONE: MessageDigest = MessageDigest([0u8; 32]);

    /// Computes the digest of an encoded (unpadded) record.
    pub fn of_encoded(encoded: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_LABEL.as_bytes());
        hasher.update([0u8]);
        hasher.update(encoded);
        let mut out = [0u8; 32];
        out.copy_from_slice(&hasher.finalize());
        Self(out)
    }
}

impl fmt::Debug for MessageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageDigest({}…)", hex::encode(&self.0[..8]))
    }
}

/// The kind of a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// The records reached the peer's device.
    Delivered,
    /// The peer has seen them.
    Read,
}

/// A receipt: which of the peer's records (by counter) were delivered or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The counters of the records concerned, 1 to 256 of them.
    pub counters: Vec<u64>,
}

/// The body of a record.
#[derive(Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// A text message.
    Text(Zeroizing<String>),
    /// A delivery or read receipt.
    Receipt(Receipt),
    /// A kind this version does not know (a later version's attachment, group data…): shown as
    /// "unsupported message" rather than dropped.
    Unsupported {
        /// The kind byte.
        kind: u8,
    },
}

impl fmt::Debug for RecordBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print message contents.
            RecordBody::Text(text) => write!(f, "Text({} bytes)", text.len()),
            RecordBody::Receipt(receipt) => f.debug_tuple("Receipt").field(receipt).finish(),
            RecordBody::Unsupported { kind } => write!(f, "Unsupported({kind})"),
        }
    }
}

/// A plaintext record (§7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// 1 for the first record the sender sent to this peer, then +1 per record.
    pub counter: u64,
    /// Counter of the last record the sender received from the peer (0: none).
    pub last_received_counter: u64,
    /// Digest of that record ([`MessageDigest::NONE`]: none).
    pub last_received_digest: MessageDigest,
    /// What the record carries.
    pub body: RecordBody,
}

impl Record {
    /// A text record.
    pub fn text(
        text: &str,
        sent_at: u64,
        counter: u64,
        last_received_counter: u64,
        last_received_digest: MessageDigest,
    ) -> Self {
        Self {
            sent_at,
            counter,
            last_received_counter,
            last_received_digest,
            body: RecordBody::Text(Zeroizing::new(text.to_owned())),
        }
    }

    /// The text, when this is a text record.
    pub fn as_text(&self) -> Option<&str> {
        match &self.body {
            RecordBody::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// Encodes the record (unpadded).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let (kind, body_len) = match &self.body {
            RecordBody::Text(text) => {
                if text.is_empty() {
                    return Err(RecordError::InvalidText);
                }
                (KIND_TEXT, text.len())
            }
            RecordBody::Receipt(receipt) => {
                if receipt.counters.is_empty() || receipt.counters.len() > MAX_RECEIPT_COUNTERS {
                    return Err(RecordError::InvalidReceipt);
                }
                (KIND_RECEIPT, 3 + 8 * receipt.counters.len())
            }
            // An unknown kind has no body this version could write.
            RecordBody::Unsupported { kind } => return Err(RecordError::UnsupportedKind(*kind)),
        };
        if RECORD_HEADER_LEN + body_len > MAX_RECORD_LEN {
            return Err(RecordError::RecordTooLarge);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(RECORD_HEADER_LEN + body_len));
        out.push(RECORD_VERSION);
        out.push(kind);
        out.extend_from_slice(&self.sent_at.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.last_received_counter.to_be_bytes());
        out.extend_from_slice(&self.last_received_digest.0);
        match &self.body {
            RecordBody::Text(text) => out.extend_from_slice(text.as_bytes()),
            RecordBody::Receipt(receipt) => {
                out.push(match receipt.kind {
                    ReceiptKind::Delivered => 1,
                    ReceiptKind::Read => 2,
                });
                out.extend_from_slice(&(receipt.counters.len() as u16).to_be_bytes());
                for counter in &receipt.counters {
                    out.extend_from_slice(&counter.to_be_bytes());
                }
            }
            RecordBody::Unsupported { .. } => {}
        }
        Ok(out)
    }

    /// Decodes an unpadded record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.is_empty() {
            return Err(RecordError::Truncated);
        }
        if bytes[0] != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(bytes[0]));
        }
        if bytes.len() < RECORD_HEADER_LEN {
            return Err(RecordError::Truncated);
        }
        let u64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[26..58]);
        let body = &bytes[RECORD_HEADER_LEN..];
        let body = match bytes[1] {
            KIND_TEXT => {
                let text = core::str::from_utf8(body).map_err(|_| RecordError::InvalidText)?;
                if text.is_empty() {
                    return Err(RecordError::InvalidText);
                }
                RecordBody::Text(Zeroizing::new(text.to_owned()))
            }
            KIND_RECEIPT => RecordBody::Receipt(decode_receipt(body)?),
            kind => RecordBody::Unsupported { kind },
        };
        Ok(Self {
            sent_at: u64_at(2),
            counter: u64_at(10),
            last_received_counter: u64_at(18),
            last_received_digest: MessageDigest(digest),
            body,
        })
    }
}

fn decode_receipt(body: &[u8]) -> Result<Receipt, RecordError> {
    let (&kind, rest) = body.split_first().ok_or(RecordError::InvalidReceipt)?;
    let kind = match kind {
        1 => ReceiptKind::Delivered,
        2 => ReceiptKind::Read,
        _ => return Err(RecordError::InvalidReceipt),
    };
    if rest.len() < 2 {
        return Err(RecordError::InvalidReceipt);
    }
    let count = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let counters = &rest[2..];
    if count == 0 || count > MAX_RECEIPT_COUNTERS || counters.len() != 8 * count {
        return Err(RecordError::InvalidReceipt);
    }
    let counters = counters
        .chunks_exact(8)
        .map(|chunk| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(chunk);
            u64::from_be_bytes(raw)
        })
        .collect();
    Ok(Receipt { kind, counters })
}

/// The bucket a record of `len` bytes is padded to.
pub fn bucket_for(len: usize) -> Result<usize, RecordError> {
    if len > MAX_RECORD_LEN {
        return Err(RecordError::RecordTooLarge);
    }
    Ok((len + 1).next_power_of_two().max(MIN_BUCKET))
}

/// Whether `len` is a bucket size.
pub fn is_bucket(len: usize) -> bool {
    len.is_power_of_two() && (MIN_BUCKET..=MAX_BUCKET).contains(&len)
}

/// Pads an encoded record: `record ‖ 0x80 ‖ 0x00…` up to its bucket.
pub fn pad(record: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let bucket = bucket_for(record.len())?;
    let mut out = Zeroizing::new(Vec::with_capacity(bucket));
    out.extend_from_slice(record);
    out.push(0x80);
    out.resize(bucket, 0);
    Ok(out)
}

/// Removes the padding, checking that the length is a bucket size and the marker is present.
pub fn unpad(padded: &[u8]) -> Result<&[u8], RecordError> {
    if !is_bucket(padded.len()) {
        return Err(RecordError::InvalidPadding);
    }
    let marker = padded.iter().rposition(|&b| b != 0).ok_or(RecordError::InvalidPadding)?;
    if padded[marker] != 0x80 {
        return Err(RecordError::InvalidPadding);
    }
    Ok(&padded[..marker])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::text("hello", 1_700_000_000_000, 3, 2, MessageDigest([7u8; 32]))
    }

    #[test]
    fn text_round_trips_through_padding() {
        let record = sample();
        let encoded = record.encode().unwrap();
        assert_eq!(encoded.len(), RECORD_HEADER_LEN + 5);
        let padded = pad(&encoded).unwrap();
        assert_eq!(padded.len(), 64);
        let decoded = Record::decode(unpad(&padded).unwrap()).unwrap();
        assert_eq!(decoded, record);
    }

    #[test]
    fn buckets_are_powers_of_two_from_64() {
        assert_eq!(bucket_for(0).unwrap(), 64);
        assert_eq!(bucket_for(63).unwrap(), 64);
        assert_eq!(bucket_for(64).unwrap(), 128);
        assert_eq!(bucket_for(MAX_RECORD_LEN).unwrap(), MAX_BUCKET);
        assert_eq!(bucket_for(MAX_RECORD_LEN + 1), Err(RecordError::RecordTooLarge));
    }

    #[test]
    fn longest_text_fits_and_one_more_byte_does_not() {
        let long = "x".repeat(MAX_TEXT_LEN);
        let record = Record::text(&long, 0, 1, 0, MessageDigest::NONE);
        assert_eq!(pad(&record.encode().unwrap()).unwrap().len(), MAX_BUCKET);
        let longer = Record::text(&format!("{long}x"), 0, 1, 0, MessageDigest::NONE);
        assert_eq!(longer.encode(), Err(RecordError::RecordTooLarge));
    }

    #[test]
    fn receipts_round_trip() {
        let record = Record {
            body: RecordBody::Receipt(Receipt { kind: ReceiptKind::Read, counters: vec![1, 2, 9] }),
            ..sample()
        };
        let encoded = record.encode().unwrap();
        assert_eq!(Record::decode(&encoded).unwrap(), record);
    }

    #[test]
    fn bad_padding_is_refused() {
        assert_eq!(unpad(&[0u8; 64]), Err(RecordError::InvalidPadding));
        let mut padded = pad(b"abc").unwrap();
        padded[3] = 0x81;
        assert_eq!(unpad(&padded), Err(RecordError::InvalidPadding));
        assert_eq!(unpad(&[0x80; 65]), Err(RecordError::InvalidPadding));
        assert_eq!(unpad(&[0x80; 32]), Err(RecordError::InvalidPadding));
    }

    #[test]
    fn bad_records_are_refused() {
        let encoded = sample().encode().unwrap();
        assert_eq!(Record::decode(&encoded[..57]), Err(RecordError::Truncated));
        let mut wrong_version = encoded.to_vec();
        wrong_version[0] = 2;
        assert_eq!(Record::decode(&wrong_version), Err(RecordError::UnsupportedVersion(2)));
        let mut bad_utf8 = encoded.to_vec();
        bad_utf8[RECORD_HEADER_LEN] = 0xff;
        assert_eq!(Record::decode(&bad_utf8), Err(RecordError::InvalidText));
        assert_eq!(
            Record::decode(&encoded[..RECORD_HEADER_LEN]),
            Err(RecordError::InvalidText),
            "an empty text is not a message"
        );
    }

    #[test]
    fn unknown_kinds_decode_as_unsupported() {
        let mut encoded = sample().encode().unwrap().to_vec();
        encoded[1] = 4;
        assert_eq!(Record::decode(&encoded).unwrap().body, RecordBody::Unsupported { kind: 4 });
    }

    #[test]
    fn debug_never_shows_the_text() {
        let printed = format!("{:?}", sample());
        assert!(!printed.contains("hello"), "{printed}");
        assert!(printed.contains("Text(5 bytes)"), "{printed}");
    }
}
