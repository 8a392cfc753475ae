/** Key handling: non-extractable keys, narrow usages, and refusing keys of the wrong kind. */

import { concatBytes, fromBase64UrlExact } from '../../src/protocol/bytes.js';
import {
  diffieHellman,
  generateDhKeyPair,
  generateSigningKeyPair,
  importDhKeyPairJwk,
  importSigningKeyPairJwk,
  sign,
  verify,
} from '../../src/protocol/keys.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/keys', {
  'generated private keys are non-extractable with one usage': async () => {
    const dh = await generateDhKeyPair();
    assert(!dh.privateKey.extractable, 'ECDH key non-extractable');
    assertEqual(dh.privateKey.usages.join(','), 'deriveBits', 'ECDH usages');
    assertEqual(dh.publicKey.length, 65, 'public key length');
    const signing = await generateSigningKeyPair();
    assert(!signing.privateKey.extractable, 'ECDSA key non-extractable');
    assertEqual(signing.privateKey.usages.join(','), 'sign', 'ECDSA usages');
  },

  'a key of the wrong kind is refused before use': async () => {
    const dh = await generateDhKeyPair();
    const signing = await generateSigningKeyPair();
    await assertRejects(() => diffieHellman(signing.privateKey, dh.publicKey), 'InvalidKey', 'ECDSA key for ECDH');
    await assertRejects(() => sign(dh.privateKey, new Uint8Array(1)), 'InvalidKey', 'ECDH key for signing');
  },

  'signatures: 64 bytes, over the exact message': async () => {
    const signing = await generateSigningKeyPair();
    const message = new TextEncoder().encode('message');
    const signature = await sign(signing.privateKey, message);
    assertEqual(signature.length, 64, 'P1363 length');
    await verify(signing.publicKey, message, signature);
    await assertRejects(() => verify(signing.publicKey, message, signature.subarray(0, 63)), 'InvalidSignature', 'short');
    await assertRejects(() => verify(signing.publicKey, new Uint8Array(7), signature), 'InvalidSignature', 'other message');
  },

  'a JWK whose public point does not match its scalar is refused': async () => {
    const a = await generateDhKeyPair();
    const jwk = {
      kty: 'EC',
      crv: 'P-256',
      x: 'Z0uvAsupy_-UTXESWpM5cuo_6LlYfVqn0EKhZbkN_AA',
      y: 'sYWFH5RV0SkPgoRn6g0NnVnziiLH-tQeduD-2L9QM3A',
      d: 'M8ukR-c4UomAUKadoCjS7VC_swVnNFJG-fvIK59Dzws',
    };
    const own = await importDhKeyPairJwk(jwk);
    const expected = concatBytes(Uint8Array.of(4), fromBase64UrlExact(jwk.x, 32), fromBase64UrlExact(jwk.y, 32));
    assertEqual(own.publicKey.join(','), expected.join(','), 'matching JWK imports');
    // Some engines (Firefox) import such a JWK without complaint; the import must still refuse.
    const other = { ...jwk, d: 's2PxK5p6irL_TsWXNfWDAIsblzS7_4fNiAFVIIqIteE' };
    await assertRejects(() => importDhKeyPairJwk(other), 'InvalidPrivateKey', 'mismatched scalar (ECDH)');
    await assertRejects(() => importSigningKeyPairJwk(other), 'InvalidPrivateKey', 'mismatched scalar (ECDSA)');
    await assertRejects(() => importDhKeyPairJwk({ ...jwk, crv: 'P-384' }), 'InvalidPrivateKey', 'other curve');
    assert(a.publicKey.length === 65, 'sanity');
  },
});
