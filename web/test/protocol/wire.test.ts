/** Wire JSON beyond the vectors: both decoding paths, optional nulls, strictness. */

import { toBase64Url } from '../../src/protocol/bytes.js';
import {
  bundleToJson,
  decodeBundle,
  decodeBundleJson,
  decodeEnvelope,
  decodeEnvelopeJson,
  encodeBundle,
  encodeEnvelope,
  envelopeToJson,
} from '../../src/protocol/wire.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';
import { pair, TestParty } from '../support/parties.js';

/** Edits a JSON text through a plain object (key order of the edit is irrelevant to decoding). */
function edit(json: string, change: (value: { [key: string]: unknown }) => void): string {
  const value = JSON.parse(json) as { [key: string]: unknown };
  change(value);
  return JSON.stringify(value);
}

export const tests = suite('protocol/wire', {
  'envelopes round-trip as text and as parsed values': async () => {
    const { alice } = await pair();
    const json = await alice.send('hi');
    const fromText = await decodeEnvelope(json);
    assert(fromText.prekey !== null, 'a prekey message');
    assertEqual(encodeEnvelope(fromText), json, 'text path');
    const fromValue = await decodeEnvelopeJson(JSON.parse(json));
    assertEqual(JSON.stringify(envelopeToJson(fromValue)), json, 'value path');
    const plain = encodeEnvelope({ ...fromText, prekey: null });
    assert(!plain.includes('"prekey"'), 'no prekey field when absent');
    assertEqual((await decodeEnvelope(plain)).prekey, null, 'decoded without prekey');
  },

  'optional fields may be null, as serde allows': async () => {
    const { alice } = await pair();
    const json = await alice.send('hi');
    const withNulls = edit(json, (v) => {
      (v['prekey'] as { [key: string]: unknown })['oneTimePrekeyId'] = null;
    });
    assertEqual((await decodeEnvelope(withNulls)).prekey?.oneTimePrekeyId, null, 'null one-time prekey id');
    const noPrekey = edit(json, (v) => {
      v['prekey'] = null;
    });
    assertEqual((await decodeEnvelope(noPrekey)).prekey, null, 'null prekey');
    const bob = await TestParty.create('bob');
    const bundle = encodeBundle(await bob.bundle());
    const nullOpk = edit(bundle, (v) => {
      v['oneTimePrekey'] = null;
    });
    assertEqual((await decodeBundle(nullOpk)).oneTimePrekey, null, 'null one-time prekey');
  },

  'bundles round-trip; required fields may not be null': async () => {
    const bob = await TestParty.create('bob');
    const json = encodeBundle(await bob.bundle());
    const decoded = await decodeBundle(json);
    assertEqual(encodeBundle(decoded), json, 'text');
    assertEqual(JSON.stringify(bundleToJson(await decodeBundleJson(JSON.parse(json)))), json, 'value');
    await assertRejects(() => decodeBundle(edit(json, (v) => { v['userId'] = null; })), 'Json', 'null user id');
    await assertRejects(() => decodeBundleJson({ ...JSON.parse(json), suite: '1' }), 'Json', 'string suite');
    await assertRejects(() => decodeBundleJson({ ...JSON.parse(json), version: 1.5 }), 'Json', 'fractional version');
  },

  'text decoding refuses duplicate keys and non-integer numbers': async () => {
    const { alice } = await pair();
    const json = await alice.send('hi');
    await assertRejects(() => decodeEnvelope(json.replace('"suite":1', '"suite":1,"suite":1')), 'Json', 'duplicate key');
    await assertRejects(() => decodeEnvelope(json.replace('"suite":1', '"suite":1.0')), 'Json', '1.0');
    await assertRejects(() => decodeEnvelope(json.replace('"version":1', '"version":18446744073709551616')), 'Json', 'beyond u64');
    await assertRejects(() => decodeEnvelope(json.replace('"version":1', '"version":18446744073709551615')), 'UnsupportedVersion', 'u64 max');
  },

  'an oversized ciphertext is refused before it is decoded': async () => {
    const { alice } = await pair();
    const json = await alice.send('hi');
    const huge = edit(json, (v) => {
      v['ciphertext'] = 'A'.repeat(50_000);
    });
    await assertRejects(() => decodeEnvelope(huge), 'InvalidCiphertextLength', 'oversized');
    const largest = edit(json, (v) => {
      v['ciphertext'] = toBase64Url(new Uint8Array(32 * 1024 + 16));
    });
    assertEqual((await decodeEnvelope(largest)).ciphertext.length, 32 * 1024 + 16, 'the largest bucket is fine');
  },
});
