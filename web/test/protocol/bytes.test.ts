/** Strict codecs and helpers of bytes.ts. */

import {
  constantTimeEqual,
  fromBase64Url,
  fromBase64UrlExact,
  fromHex,
  toBase64Url,
  toHex,
  u64be,
} from '../../src/protocol/bytes.js';
import { assert, assertBytes, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/bytes', {
  'base64url round-trips every length': async () => {
    for (let length = 0; length < 70; length++) {
      const bytes = Uint8Array.from({ length }, (_, i) => (i * 37 + length) & 0xff);
      const text = toBase64Url(bytes);
      assert(!/[=+/]/.test(text), 'URL alphabet without padding');
      assertBytes(fromBase64Url(text), bytes, `length ${length}`);
    }
    assertEqual(toBase64Url(Uint8Array.of(0xfb, 0xff)), '-_8', 'the URL-safe characters');
  },

  'base64url decoding is strict': async () => {
    assertBytes(fromBase64Url('AQID'), '010203', 'plain');
    for (const [text, why] of [
      ['AQI=', 'padding'],
      ['AQJ', 'non-zero trailing bits'],
      ['AR', 'non-zero trailing bits in a one-byte tail'],
      ['AQ+/', 'standard alphabet'],
      ['AQ I', 'whitespace'],
      ['AQID\n', 'trailing newline'],
      ['A', 'impossible length'],
      ['AQIDé', 'non-ASCII'],
    ] as const) {
      await assertRejects(() => fromBase64Url(text), 'InvalidBase64', why);
    }
    await assertRejects(() => fromBase64UrlExact('AQID', 4), 'InvalidLength', 'exact length');
  },

  'hex is lower case and even': async () => {
    assertEqual(toHex(Uint8Array.of(0, 0xab, 0xff)), '00abff', 'encode');
    assertBytes(fromHex('00abff'), '00abff', 'decode');
    await assertRejects(() => fromHex('ABFF'), 'InvalidHex', 'upper case');
    await assertRejects(() => fromHex('abc'), 'InvalidHex', 'odd length');
  },

  'constant-time comparison and u64': async () => {
    assert(constantTimeEqual(Uint8Array.of(1, 2), Uint8Array.of(1, 2)), 'equal');
    assert(!constantTimeEqual(Uint8Array.of(1, 2), Uint8Array.of(1, 3)), 'different');
    assert(!constantTimeEqual(Uint8Array.of(1, 2), Uint8Array.of(1)), 'different lengths');
    assertBytes(u64be((1n << 64n) - 1n), 'ffffffffffffffff', 'largest u64');
    await assertRejects(() => u64be(1n << 64n), 'OutOfRange', 'beyond u64');
    await assertRejects(() => u64be(2 ** 53), 'OutOfRange', 'an unsafe number');
  },
});
