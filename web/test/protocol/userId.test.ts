/** User ids: ASCII lower-casing and the strict character set (PROTOCOL.md §3). */

import { encodeUserId, parseUserId } from '../../src/protocol/userId.js';
import { assertBytes, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/userId', {
  'normalises and accepts the allowed set': async () => {
    assertEqual(parseUserId('Alice'), 'alice', 'lower-cased');
    assertEqual(parseUserId('bob.smith_2-x'), 'bob.smith_2-x', 'punctuation');
    assertEqual(parseUserId('42'), '42', 'digits');
    assertEqual(parseUserId('a'.repeat(32)).length, 32, 'longest');
  },

  'refuses everything else': async () => {
    for (const input of ['a', 'a'.repeat(33), '', ' alice', 'alice ', 'al ice', 'ålice', 'alice\u0000', '_alice', '..', '\u212Aim', 'alice\n']) {
      await assertRejects(() => parseUserId(input), 'InvalidUserId', JSON.stringify(input));
    }
  },

  'binary form is length-prefixed': async () => {
    assertBytes(encodeUserId(parseUserId('bob')), '03626f62', 'bob');
  },
});
