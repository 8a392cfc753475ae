/**
 * The IndexedDB store (src/store/store.ts): the walk back from a conversation's newest message,
 * the status index and the relay-id index. Browser-only cases (Node has no IndexedDB): the in-page harness runs
 * them beside the portable ones.
 */

import { type Message, type MessageStatus, Store } from '../../src/store/store.js';
import { suite } from '../support/cases.js';
import { assert, assertEqual } from '../support/assert.js';

let opened = 0;

/** A fresh, empty database of its own; deleted after `work`. */
async function withStore(work: (store: Store, name: string) => Promise<void>): Promise<void> {
  const name = `sotto-store-test-${Date.now()}-${opened++}`;
  const store = await Store.open(name);
  try {
    await work(store, name);
  } finally {
    store.close();
    await Store.destroy(name);
  }
}

/**
 * A database left by an earlier version of the store: its messages store with the indexes
 * `fill` gives it (besides the first version's `byPeer`) and the messages it adds. Returns its
 * name, for the current store to open (and upgrade).
 */
async function olderDatabase(version: number, fill: (messages: IDBObjectStore) => void): Promise<string> {
  const name = `sotto-store-upgrade-${Date.now()}-${opened++}`;
  await new Promise<void>((resolve, reject) => {
    const open = indexedDB.open(name, version);
    open.onupgradeneeded = () => {
      const messages = open.result.createObjectStore('messages', { keyPath: 'id', autoIncrement: true });
      messages.createIndex('byPeer', ['peer', 'id']);
      fill(messages);
    };
    open.onsuccess = () => {
      open.result.close();
      resolve();
    };
    open.onerror = () => reject(open.error ?? new Error('cannot open'));
  });
  return name;
}

function message(peer: string, direction: Message['direction'], counter: number, status: MessageStatus, serverId: number | null = null): Message {
  return {
    peer,
    direction,
    kind: direction === 'notice' ? 'missing' : 'text',
    text: `${direction} ${counter}`,
    counter: BigInt(counter),
    sentAt: 1_700_000_000_000 + counter,
    receivedAt: null,
    serverId,
    clientId: direction === 'out' ? `c-${peer}-${counter}` : null,
    status,
    error: null,
    digest: null,
  };
}

export const tests = suite('store', {
  'the walk back starts at the newest message, stays in the conversation and ends where told': async () => {
    await withStore(async (store) => {
      await store.write(['messages'], async (tx) => {
        for (let i = 1; i <= 6; i++) {
          await tx.addMessage(message('bob', i % 2 === 0 ? 'out' : 'in', i, 'delivered'));
          await tx.addMessage(message('carol', 'in', i, 'received'));
        }
      });
      const walked = await store.read(['messages'], (tx) => tx.newestFirst('bob', (m) => m.counter !== 3n));
      assertEqual(walked.map((m) => `${m.peer} ${m.counter}`).join(), 'bob 6,bob 5,bob 4,bob 3', 'newest first, the stopping one included');
      const all = await store.read(['messages'], (tx) => tx.newestFirst('bob', () => true));
      assertEqual(all.length, 6, 'without a stop, the whole conversation');
      assertEqual(all.at(-1)?.counter, 1n, 'the oldest last');
      const none = await store.read(['messages'], (tx) => tx.newestFirst('dave', () => true));
      assertEqual(none.length, 0, 'an unknown peer has no messages');
    });
  },
  'messages waiting for a delivery report are found by status, whatever the conversation': async () => {
    await withStore(async (store) => {
      const stored = await store.write(['messages'], async (tx) => {
        await tx.addMessage(message('bob', 'out', 1, 'delivered', 10));
        const waiting = await tx.addMessage(message('bob', 'out', 2, 'stored', 11));
        await tx.addMessage(message('bob', 'out', 3, 'sending'));
        await tx.addMessage(message('carol', 'out', 1, 'stored', 12));
        await tx.addMessage(message('carol', 'in', 1, 'received', 13));
        return waiting;
      });
      const before = await store.read(['messages'], (tx) => tx.undelivered());
      assertEqual(before.map((m) => `${m.peer} ${m.serverId}`).sort().join(), 'bob 11,carol 12', 'stored ones only');
      await store.write(['messages'], async (tx) => {
        const m = await tx.message(stored);
        assert(m !== null, 'the stored message is there');
        await tx.putMessage({ ...m, status: 'delivered' });
      });
      const after = await store.read(['messages'], (tx) => tx.undelivered());
      assertEqual(after.map((m) => m.peer).join(), 'carol', 'a delivered one leaves the index');
    });
  },
  'a message received under the relay id of one of ours is not taken for ours': async () => {
    await withStore(async (store) => {
      await store.write(['messages'], (tx) => tx.addMessage(message('bob', 'out', 1, 'stored', 7)));
      const before = await store.read(['messages'], (tx) => tx.receivedByServerId('bob', 7));
      assertEqual(before, null, 'ours is not a received one');
      // Saved beside ours (a relay that reuses an id must not make it undeliverable)...
      await store.write(['messages'], (tx) => tx.addMessage(message('bob', 'in', 1, 'received', 7)));
      const after = await store.read(['messages'], (tx) => tx.receivedByServerId('bob', 7));
      assertEqual(after?.direction, 'in', 'found once saved');
      assertEqual(after?.counter, 1n, 'the received one');
      // ...while a second received one under the same id is still refused.
      let refused = false;
      try {
        await store.write(['messages'], (tx) => tx.addMessage(message('bob', 'in', 2, 'received', 7)));
      } catch {
        refused = true;
      }
      assert(refused, 'one received message per relay id');
    });
  },
  'a database of the second version takes a received message under the relay id of one of ours': async () => {
    // Version 2's messages store as it was, holding one of ours under relay id 7.
    const name = await olderDatabase(2, (messages) => {
      messages.createIndex('byServerId', ['peer', 'serverId'], { unique: true });
      messages.createIndex('byClientId', 'clientId', { unique: true });
      messages.createIndex('byStatus', 'status');
      messages.add(message('bob', 'out', 1, 'stored', 7));
    });
    const store = await Store.open(name);
    try {
      assertEqual(await store.read(['messages'], (tx) => tx.receivedByServerId('bob', 7)), null, 'ours is not a received one');
      await store.write(['messages'], (tx) => tx.addMessage(message('bob', 'in', 1, 'received', 7)));
      assertEqual((await store.read(['messages'], (tx) => tx.receivedByServerId('bob', 7)))?.direction, 'in', 'saved and found');
    } finally {
      store.close();
      await Store.destroy(name);
    }
  },
  'a database of the first version gains the status index over the messages it holds': async () => {
    // Version 1's messages store as it was created, holding one message waiting for a report.
    const name = await olderDatabase(1, (messages) => {
      messages.add(message('bob', 'out', 1, 'stored', 42));
    });
    const store = await Store.open(name);
    try {
      const waiting = await store.read(['messages'], (tx) => tx.undelivered());
      assertEqual(waiting.map((m) => m.serverId).join(), '42', 'the earlier message is found through the new index');
    } finally {
      store.close();
      await Store.destroy(name);
    }
  },
});
