/** Records and padding beyond the vectors (PROTOCOL.md §7). */

import {
  bucketFor,
  decodeRecord,
  encodeRecord,
  MAX_BUCKET,
  MAX_RECORD_LENGTH,
  MAX_TEXT_LENGTH,
  noDigest,
  padRecord,
  type PlaintextRecord,
  type RecordBody,
  unpadRecord,
} from '../../src/protocol/record.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

function record(body: RecordBody): PlaintextRecord {
  return { sentAt: 1_700_000_000_000n, counter: 3n, lastReceivedCounter: 2n, lastReceivedDigest: noDigest(), body };
}

export const tests = suite('protocol/record', {
  'buckets are powers of two from 64 to 32768': async () => {
    assertEqual(bucketFor(0), 64, 'empty');
    assertEqual(bucketFor(63), 64, '63');
    assertEqual(bucketFor(64), 128, '64');
    assertEqual(bucketFor(MAX_RECORD_LENGTH), MAX_BUCKET, 'largest');
    await assertRejects(() => bucketFor(MAX_RECORD_LENGTH + 1), 'RecordTooLarge', 'beyond');
  },

  'the longest text fits and one more byte does not': async () => {
    const longest = record({ kind: 'text', text: 'x'.repeat(MAX_TEXT_LENGTH) });
    assertEqual(padRecord(encodeRecord(longest)).length, MAX_BUCKET, 'largest bucket');
    await assertRejects(() => encodeRecord(record({ kind: 'text', text: 'x'.repeat(MAX_TEXT_LENGTH + 1) })), 'RecordTooLarge', 'too long');
  },

  'text round-trips, a leading byte order mark included': async () => {
    for (const text of ['hello', '\ufeffstarts with a BOM', 'grüß dich 👋']) {
      const decoded = decodeRecord(unpadRecord(padRecord(encodeRecord(record({ kind: 'text', text })))));
      assert(decoded.body.kind === 'text', 'text');
      assertEqual(decoded.body.text, text, JSON.stringify(text));
      assertEqual(decoded.counter, 3n, 'counter');
    }
  },

  'texts that cannot be encoded are refused': async () => {
    await assertRejects(() => encodeRecord(record({ kind: 'text', text: '' })), 'InvalidText', 'empty');
    await assertRejects(() => encodeRecord(record({ kind: 'text', text: 'a\ud800b' })), 'InvalidText', 'lone surrogate');
    await assertRejects(() => encodeRecord(record({ kind: 'unsupported', kindByte: 4 })), 'UnsupportedRecordKind', 'unknown kind');
  },

  'receipts round-trip with 1 to 256 u64 counters': async () => {
    const counters = [1n, 2n, (1n << 64n) - 1n];
    const decoded = decodeRecord(encodeRecord(record({ kind: 'receipt', receipt: { type: 'read', counters } })));
    assert(decoded.body.kind === 'receipt', 'receipt');
    assertEqual(decoded.body.receipt.type, 'read', 'type');
    assertEqual(decoded.body.receipt.counters.join(','), counters.join(','), 'counters, exactly');
    await assertRejects(() => encodeRecord(record({ kind: 'receipt', receipt: { type: 'read', counters: [] } })), 'InvalidReceipt', 'none');
    const many = Array.from({ length: 257 }, (_, i) => BigInt(i));
    await assertRejects(() => encodeRecord(record({ kind: 'receipt', receipt: { type: 'read', counters: many } })), 'InvalidReceipt', '257');
  },

  'u64 header fields are exact beyond 2^53': async () => {
    const big = record({ kind: 'text', text: 'x' });
    const decoded = decodeRecord(encodeRecord({ ...big, sentAt: (1n << 64n) - 1n, counter: (1n << 53n) + 1n }));
    assertEqual(decoded.sentAt, (1n << 64n) - 1n, 'sentAt');
    assertEqual(decoded.counter, (1n << 53n) + 1n, 'counter');
    await assertRejects(() => encodeRecord({ ...big, counter: -1n }), 'OutOfRange', 'negative');
  },

  'bad padding is refused': async () => {
    await assertRejects(() => unpadRecord(new Uint8Array(64)), 'InvalidPadding', 'all zero');
    await assertRejects(() => unpadRecord(new Uint8Array(65).fill(0x80)), 'InvalidPadding', 'not a bucket');
    await assertRejects(() => unpadRecord(new Uint8Array(32).fill(0x80)), 'InvalidPadding', 'below the smallest bucket');
    const padded = padRecord(Uint8Array.of(1, 2, 3));
    padded[3] = 0x81;
    await assertRejects(() => unpadRecord(padded), 'InvalidPadding', 'wrong marker');
  },
});
