/** Signed messages (PROTOCOL.md §4.1), identities and prekeys beyond the vectors. */

import { generateIdentity, verifyPublicIdentity } from '../../src/protocol/identity.js';
import { generateDhKeyPair } from '../../src/protocol/keys.js';
import { createBundle, generateSignedPrekey, publicSignedPrekey, restoreSignedPrekey } from '../../src/protocol/prekeys.js';
import { authenticationMessage } from '../../src/protocol/signing.js';
import { parseUserId } from '../../src/protocol/userId.js';
import { assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';

export const tests = suite('protocol/signing', {
  'a challenge binds a printable host and a 32-byte nonce': async () => {
    const alice = parseUserId('alice');
    const nonce = new Uint8Array(32);
    const message = authenticationMessage('relay.example:443', alice, nonce);
    assertEqual(message.length, 'Sotto v1 authentication'.length + 1 + 1 + 17 + 1 + 5 + 32, 'length');
    for (const host of ['', 'with space', 'x'.repeat(256), 'tab\t', 'é']) {
      await assertRejects(() => authenticationMessage(host, alice, nonce), 'InvalidHost', JSON.stringify(host));
    }
    await assertRejects(() => authenticationMessage('h', alice, new Uint8Array(31)), 'InvalidLength', 'short nonce');
  },

  'identities and signed prekeys verify, and only with their own keys': async () => {
    const identity = await generateIdentity();
    const other = await generateIdentity();
    const { signing, dh, signature } = identity.publicIdentity;
    await verifyPublicIdentity(signing, dh, signature);
    await assertRejects(() => verifyPublicIdentity(signing, other.publicIdentity.dh, signature), 'InvalidSignature', 'swapped IKd');
    const spk = await generateSignedPrekey(identity, 7, 1_767_225_600);
    await restoreSignedPrekey(identity.publicIdentity, 7, 1_767_225_600, spk.keyPair, spk.signature);
    await assertRejects(
      () => restoreSignedPrekey(identity.publicIdentity, 7, 1_767_225_601, spk.keyPair, spk.signature),
      'InvalidSignature',
      'another creation time',
    );
    await assertRejects(
      () => createBundle(parseUserId('bob'), other.publicIdentity, publicSignedPrekey(spk), null),
      'InvalidSignature',
      'a prekey signed by someone else',
    );
    await assertRejects(() => generateSignedPrekey(identity, 2 ** 32, 0, generateDhKeyPair), 'OutOfRange', 'id beyond u32');
  },
});
