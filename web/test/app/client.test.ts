/**
 * The client (src/app/client.ts) on its own store, without a relay: what accepting a changed
 * identity does. Browser-only cases (the client keeps everything in IndexedDB): the in-page
 * harness runs them beside the store's.
 */

import { Client } from '../../src/app/client.js';
import { emptyCounters } from '../../src/app/counters.js';
import { isAppError } from '../../src/app/errors.js';
import { generateIdentity, type PublicIdentity, sameIdentityKeys } from '../../src/protocol/identity.js';
import { Store } from '../../src/store/store.js';
import { suite } from '../support/cases.js';
import { assert, assertEqual } from '../support/assert.js';

let opened = 0;

/** A client for `alice` in a fresh database of its own (never connected); deleted after `work`. */
async function withClient(work: (client: Client, store: Store) => Promise<void>): Promise<void> {
  const name = `sotto-client-test-${Date.now()}-${opened++}`;
  const store = await Store.open(name);
  // A port nothing listens on: the client is never started, so it never connects.
  const client = await Client.create(store, 'alice', { url: 'http://127.0.0.1:9', host: '127.0.0.1:9' });
  try {
    await work(client, store);
  } finally {
    client.stop();
    store.close();
    await Store.destroy(name);
  }
}

async function newIdentity(): Promise<PublicIdentity> {
  return (await generateIdentity()).publicIdentity;
}

export const tests = suite('app/client', {
  'accepting a key change names the identity shown, and another one pending by then is refused': async () => {
    await withClient(async (client, store) => {
      const [trusted, shown, swapped] = [await newIdentity(), await newIdentity(), await newIdentity()];
      // Bob's identity was trusted and verified; the user was shown `shown` as his new one, and
      // the relay has since made `swapped` the pending one.
      await store.write(['contacts', 'conversations'], async (tx) => {
        await tx.putContact({ peer: 'bob', identity: trusted, verified: true, pending: swapped, addedAt: 1, changedAt: 2 });
        await tx.putConversation({
          peer: 'bob',
          counters: { ...emptyCounters(), sent: 3n, receivedContiguous: 5n, receivedAbove: [7n], peerReceived: 2n },
          unread: 0,
          updatedAt: 1,
          preview: '',
        });
      });
      let refusal: unknown = null;
      await client.acceptKeyChange('bob', shown).catch((error: unknown) => (refusal = error));
      assert(isAppError(refusal, 'key_changed_again'), `refused as key_changed_again (${String(refusal)})`);
      const kept = await store.read(['contacts', 'conversations'], async (tx) => ({ contact: await tx.contact('bob'), conversation: await tx.conversation('bob') }));
      assert(kept.contact !== null && sameIdentityKeys(kept.contact.identity, trusted), 'the trusted identity stays');
      assert(kept.contact.pending !== null && sameIdentityKeys(kept.contact.pending, swapped), 'the swapped one stays pending');
      assertEqual(kept.contact.verified, true, 'still verified');
      assertEqual(kept.conversation?.counters.receivedContiguous, 5n, 'the count is untouched');

      // The one pending, once shown, is accepted: trusted, not verified, and its next record
      // starts the count of bob's records afresh (ours go on).
      await client.acceptKeyChange('bob', swapped);
      const after = await store.read(['contacts', 'conversations'], async (tx) => ({ contact: await tx.contact('bob'), conversation: await tx.conversation('bob') }));
      assert(after.contact !== null && sameIdentityKeys(after.contact.identity, swapped), 'accepted');
      assertEqual(after.contact.pending, null, 'nothing pending');
      assertEqual(after.contact.verified, false, 'not verified');
      const counters = after.conversation?.counters;
      assertEqual(counters?.receivedContiguous, 0n, 'counting starts afresh');
      assertEqual(counters?.receivedAbove.length, 0, 'nothing above');
      assertEqual(counters?.sent, 3n, 'our count goes on');
      assertEqual(counters?.peerReceived, 2n, 'what the peer confirmed stays');

      // A second click on the same banner changes nothing.
      await client.acceptKeyChange('bob', swapped);
      const again = await store.read(['contacts'], (tx) => tx.contact('bob'));
      assertEqual(again?.changedAt, after.contact.changedAt, 'accepted once');
    });
  },
});
