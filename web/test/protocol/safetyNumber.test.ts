/** Safety numbers beyond the vectors: QR comparison. */

import { fingerprintDigits, matchesQr, QR_LENGTH, type SafetyNumber } from '../../src/protocol/safetyNumber.js';
import { assert, assertEqual } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/safetyNumber', {
  'a scanned QR payload must match every byte': async () => {
    const qr = Uint8Array.from({ length: QR_LENGTH }, (_, i) => i);
    const number: SafetyNumber = { digits: '0'.repeat(60), grouped: '', qr };
    assert(matchesQr(number, qr.slice()), 'same bytes');
    const altered = qr.slice();
    altered[64] = (altered[64] ?? 0) ^ 1;
    assert(!matchesQr(number, altered), 'one bit off');
    assert(!matchesQr(number, qr.subarray(0, 64)), 'too short');
  },

  'digits: six 40-bit chunks mod 100000, zero-padded': async () => {
    const fingerprint = new Uint8Array(64);
    fingerprint.set([0xff, 0xff, 0xff, 0xff, 0xff], 0); // 2^40 - 1 = 1099511627775
    fingerprint.set([0, 0, 0, 0, 7], 5);
    assertEqual(fingerprintDigits(fingerprint), '27775' + '00007' + '00000'.repeat(4), 'digits');
  },
});
