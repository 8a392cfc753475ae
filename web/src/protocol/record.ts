/**
 * Typed plaintext records and their padding (PROTOCOL.md §7).
 *
 *     record  = version (1) ‖ kind ‖ sent_at (u64) ‖ counter (u64)
 *             ‖ last_received_counter (u64) ‖ last_received_digest (32) ‖ body
 *     padded  = record ‖ 0x80 ‖ 0x00 … up to the bucket (a power of two, 64 to 32,768)
 *     digest  = SHA-256("Sotto v1 message digest" ‖ 0x00 ‖ record)
 *
 * The `u64` fields are `bigint`s: a JavaScript number cannot hold every `u64`, and a counter
 * misread by rounding would break the hash chain of §7.3 without anyone noticing.
 */

import { type Bytes, concatBytes, readU64be, u16be, u64be, wipe } from './bytes.js';
import { ProtocolError } from './errors.js';

/** The record format version. */
export const RECORD_VERSION = 1;
/** Length of the fixed part before the body. */
export const RECORD_HEADER_LENGTH = 58;
/** Smallest padded size. */
export const MIN_BUCKET = 64;
/** Largest padded size; a record must be shorter than this. */
export const MAX_BUCKET = 32 * 1024;
/** Longest encoded record (one byte is needed for the padding marker). */
export const MAX_RECORD_LENGTH = MAX_BUCKET - 1;
/** Longest text body, in UTF-8 bytes. */
export const MAX_TEXT_LENGTH = MAX_RECORD_LENGTH - RECORD_HEADER_LENGTH;
/** Most counters one receipt may name. */
export const MAX_RECEIPT_COUNTERS = 256;
/** Domain label of message digests. */
export const DIGEST_LABEL = 'Sotto v1 message digest';
/** Length of a message digest. */
export const DIGEST_LENGTH = 32;

const KIND_TEXT = 1;
const KIND_RECEIPT = 2;

declare const messageDigestBrand: unique symbol;

/** A message digest (§7.3): SHA-256 over the label and the unpadded record. */
export type MessageDigest = Bytes & { readonly [messageDigestBrand]: true };

/** The digest of "nothing received yet": 32 zero bytes (a fresh array each time). */
export function noDigest(): MessageDigest {
  return new Uint8Array(DIGEST_LENGTH) as MessageDigest;
}

/** A delivery or read receipt: which of the peer's records (by counter) it concerns. */
export interface Receipt {
  /** Delivered to the device, or seen by the person. */
  readonly type: 'delivered' | 'read';
  /** The counters of the records concerned, 1 to 256 of them. */
  readonly counters: readonly bigint[];
}

/** What a record carries. */
export type RecordBody =
  /** A text message (never empty). */
  | { readonly kind: 'text'; readonly text: string }
  /** A delivery or read receipt. */
  | { readonly kind: 'receipt'; readonly receipt: Receipt }
  /**
   * A kind this version does not know (a later version's attachment, group data…): shown as
   * "unsupported message" rather than dropped.
   */
  | { readonly kind: 'unsupported'; readonly kindByte: number };

/** A plaintext record (§7.1). */
export interface PlaintextRecord {
  /** Sender's clock, milliseconds since the Unix epoch. */
  readonly sentAt: bigint;
  /** 1 for the first record the sender sent to this peer, then +1 per record of any kind. */
  readonly counter: bigint;
  /** Counter of the last record the sender received from the peer (0: none). */
  readonly lastReceivedCounter: bigint;
  /** Digest of that record ({@link noDigest}: none). */
  readonly lastReceivedDigest: MessageDigest;
  /** What the record carries. */
  readonly body: RecordBody;
}

// Lone UTF-16 surrogates cannot be encoded as UTF-8 (TextEncoder would silently write U+FFFD);
// with the `u` flag this class matches only unpaired surrogates.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/** Encodes a record (unpadded). */
export function encodeRecord(record: PlaintextRecord): Bytes {
  let kind: number;
  let body: Bytes;
  switch (record.body.kind) {
    case 'text': {
      const text = record.body.text;
      if (text.length === 0 || LONE_SURROGATE.test(text)) {
        throw new ProtocolError('InvalidText', 'a text is non-empty, well-formed Unicode');
      }
      kind = KIND_TEXT;
      body = new TextEncoder().encode(text);
      break;
    }
    case 'receipt': {
      const { type, counters } = record.body.receipt;
      if (counters.length === 0 || counters.length > MAX_RECEIPT_COUNTERS || (type !== 'delivered' && type !== 'read')) {
        throw new ProtocolError('InvalidReceipt', 'a receipt names 1 to 256 counters');
      }
      kind = KIND_RECEIPT;
      body = concatBytes(Uint8Array.of(type === 'delivered' ? 1 : 2), u16be(counters.length), ...counters.map((c) => u64be(c)));
      break;
    }
    case 'unsupported':
      // An unknown kind has no body this version could write.
      throw new ProtocolError('UnsupportedRecordKind', 'cannot encode a record kind this version does not know');
  }
  if (RECORD_HEADER_LENGTH + body.length > MAX_RECORD_LENGTH) {
    wipe(body);
    throw new ProtocolError('RecordTooLarge', 'the record does not fit the largest bucket');
  }
  if (record.lastReceivedDigest.length !== DIGEST_LENGTH) {
    throw new ProtocolError('InvalidLength', 'a digest is 32 bytes', 'lastReceivedDigest');
  }
  const encoded = concatBytes(
    Uint8Array.of(RECORD_VERSION, kind),
    u64be(record.sentAt),
    u64be(record.counter),
    u64be(record.lastReceivedCounter),
    record.lastReceivedDigest,
    body,
  );
  wipe(body);
  return encoded;
}

/** Decodes an unpadded record. */
export function decodeRecord(bytes: Uint8Array): PlaintextRecord {
  if (bytes.length === 0) throw new ProtocolError('Truncated', 'empty record');
  if (bytes[0] !== RECORD_VERSION) throw new ProtocolError('UnsupportedVersion', 'unsupported record version');
  if (bytes.length < RECORD_HEADER_LENGTH) throw new ProtocolError('Truncated', 'record shorter than its header');
  const kind = bytes[1] ?? 0;
  const rest = bytes.subarray(RECORD_HEADER_LENGTH);
  let body: RecordBody;
  if (kind === KIND_TEXT) {
    let text: string;
    try {
      // ignoreBOM: a leading U+FEFF is part of the text, as it is for the Rust core.
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(rest);
    } catch {
      throw new ProtocolError('InvalidText', 'text is not UTF-8');
    }
    if (text.length === 0) throw new ProtocolError('InvalidText', 'empty text');
    body = { kind: 'text', text };
  } else if (kind === KIND_RECEIPT) {
    body = { kind: 'receipt', receipt: decodeReceipt(rest) };
  } else {
    body = { kind: 'unsupported', kindByte: kind };
  }
  return {
    sentAt: readU64be(bytes, 2),
    counter: readU64be(bytes, 10),
    lastReceivedCounter: readU64be(bytes, 18),
    lastReceivedDigest: bytes.slice(26, RECORD_HEADER_LENGTH) as MessageDigest,
    body,
  };
}

function decodeReceipt(body: Uint8Array): Receipt {
  const invalid = (): never => {
    throw new ProtocolError('InvalidReceipt', 'malformed receipt');
  };
  if (body.length < 3) invalid();
  const typeByte = body[0];
  const type = typeByte === 1 ? 'delivered' : typeByte === 2 ? 'read' : invalid();
  const count = ((body[1] ?? 0) << 8) | (body[2] ?? 0);
  if (count === 0 || count > MAX_RECEIPT_COUNTERS || body.length - 3 !== 8 * count) invalid();
  const counters: bigint[] = [];
  for (let i = 0; i < count; i++) counters.push(readU64be(body, 3 + 8 * i));
  return { type, counters };
}

/** The bucket a record of `length` bytes is padded to (`RecordTooLarge` beyond the largest). */
export function bucketFor(length: number): number {
  if (length > MAX_RECORD_LENGTH) throw new ProtocolError('RecordTooLarge', 'the record does not fit the largest bucket');
  let bucket = MIN_BUCKET;
  while (bucket < length + 1) bucket *= 2;
  return bucket;
}

/** Whether `length` is a bucket size: a power of two from 64 to 32,768. */
export function isBucket(length: number): boolean {
  return length >= MIN_BUCKET && length <= MAX_BUCKET && (length & (length - 1)) === 0;
}

/** Pads an encoded record: `record ‖ 0x80 ‖ 0x00…` up to its bucket. */
export function padRecord(encoded: Uint8Array): Bytes {
  const padded = new Uint8Array(bucketFor(encoded.length));
  padded.set(encoded);
  padded[encoded.length] = 0x80;
  return padded;
}

/**
 * Removes the padding: the length must be a bucket size and the last non-zero byte `0x80`
 * (`InvalidPadding` otherwise). Returns a copy.
 */
export function unpadRecord(padded: Uint8Array): Bytes {
  if (!isBucket(padded.length)) throw new ProtocolError('InvalidPadding', 'not a bucket size');
  let marker = padded.length - 1;
  while (marker >= 0 && padded[marker] === 0) marker--;
  if (marker < 0 || padded[marker] !== 0x80) throw new ProtocolError('InvalidPadding', 'no 0x80 marker');
  return padded.slice(0, marker);
}

/** The digest of an encoded (unpadded) record. */
export async function recordDigest(encoded: Uint8Array): Promise<MessageDigest> {
  const input = concatBytes(new TextEncoder().encode(DIGEST_LABEL), Uint8Array.of(0), encoded);
  try {
    return new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', input)) as MessageDigest;
  } finally {
    wipe(input);
  }
}

/** A text record. */
export function textRecord(
  text: string,
  fields: Omit<PlaintextRecord, 'body'>,
): PlaintextRecord {
  return { ...fields, body: { kind: 'text', text } };
}
