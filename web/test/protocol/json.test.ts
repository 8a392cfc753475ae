/** The strict JSON parser refuses what serde_json refuses. */

import { parseStrictJson } from '../../src/protocol/json.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/json', {
  'parses JSON with integers as bigints': async () => {
    const value = parseStrictJson(' {"a": [1, 18446744073709551615, "x\\u00e9\\n", true, false, null], "b": {}} ');
    assert(typeof value === 'object' && value !== null && !Array.isArray(value), 'an object');
    const a = value['a'];
    assert(Array.isArray(a), 'an array');
    assertEqual(a[0], 1n, 'small integer');
    assertEqual(a[1], 18446744073709551615n, 'u64 max, exactly');
    assertEqual(a[2], 'xé\n', 'escapes');
    assertEqual(Object.getPrototypeOf(value), null, 'null prototype');
  },

  'refuses what serde_json refuses': async () => {
    for (const [text, why] of [
      ['{"a":1,"a":2}', 'duplicate key'],
      ['{"a":1.0}', 'fraction'],
      ['{"a":1e3}', 'exponent'],
      ['{"a":-1}', 'negative'],
      ['{"a":-0}', 'negative zero'],
      ['{"a":01}', 'leading zero'],
      ['{"a":"\\ud800"}', 'lone surrogate escape'],
      ['{"a":"\\x41"}', 'bad escape'],
      ['{"a":"tab\there"}', 'raw control character'],
      ['{"a":1,}', 'trailing comma'],
      ['{"a":1} x', 'trailing characters'],
      ['\ufeff{}', 'byte order mark'],
      ["{'a':1}", 'single quotes'],
      ['', 'empty'],
      ['[1', 'unterminated'],
      ['['.repeat(200) + ']'.repeat(200), 'too deep'],
    ] as const) {
      await assertRejects(() => parseStrictJson(text), 'Json', why);
    }
  },

  'a __proto__ key is an ordinary key': async () => {
    const value = parseStrictJson('{"__proto__": {"x": 1}}');
    assert(typeof value === 'object' && value !== null && !Array.isArray(value), 'an object');
    assert(Object.prototype.hasOwnProperty.call(value, '__proto__'), 'own key');
    assertEqual(Object.getPrototypeOf(value), null, 'prototype untouched');
  },
});
