/**
 * In-page benchmark: the per-message cost of the protocol in this browser. A session between
 * two parties is set up once; then each round trip encrypts a 256-byte text record on one side
 * and decrypts it on the other (alternating directions every `turn` messages, so DH ratchet
 * steps are included as in a conversation), with the wire encoding and strict decoding of the
 * envelope in between, as the client does. Beside it, what an arriving message reads of its
 * conversation in IndexedDB as the history grows. Results go to `window.sottoBench`.
 */

import { noDigest, textRecord } from '../../src/protocol/record.js';
import { type Message, Store } from '../../src/store/store.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/wire.js';
import { TestParty } from '../support/parties.js';

export interface BenchResult {
  readonly name: string;
  readonly messages: number;
  readonly ms: number;
  readonly perSecond: number;
  readonly microsPerMessage: number;
}

declare global {
  interface Window {
    sottoBench?: Promise<BenchResult[]>;
  }
}

const TEXT = 'x'.repeat(256);

async function conversation(messages: number, turn: number): Promise<BenchResult> {
  const alice = await TestParty.create('alice');
  const bob = await TestParty.create('bob');
  await alice.record.initiate(alice.local, bob.userId, await bob.bundle());
  // Warm-up: the first message carries the prekey header and runs X3DH on Bob's side.
  await exchange(alice, bob, 1);
  await exchange(bob, alice, 1);
  const start = performance.now();
  let sent = 0;
  let from = alice;
  let to = bob;
  while (sent < messages) {
    const n = Math.min(turn, messages - sent);
    await exchange(from, to, n);
    sent += n;
    [from, to] = [to, from];
  }
  const ms = performance.now() - start;
  return {
    name: `encrypt + encode + decode + decrypt, 256 B, turns of ${turn}`,
    messages,
    ms,
    perSecond: (messages / ms) * 1000,
    microsPerMessage: (ms * 1000) / messages,
  };
}

async function exchange(from: TestParty, to: TestParty, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    from.sent += 1n;
    const record = textRecord(TEXT, { sentAt: BigInt(Date.now()), counter: from.sent, lastReceivedCounter: 0n, lastReceivedDigest: noDigest() });
    const { envelope } = await from.record.encrypt(record);
    const wire = encodeEnvelope(envelope);
    const decoded = await decodeEnvelope(wire);
    await to.record.decrypt(to.local, from.userId, decoded, to.prekeys);
  }
}

/**
 * What an arriving message reads of its conversation in IndexedDB, with `history` messages
 * already kept (half ours, all but the newest confirmed): the whole history, as every arrival
 * did before, against the walk back from the newest message to the last confirmed one of ours.
 */
async function arrivalReads(history: number): Promise<BenchResult[]> {
  const name = `sotto-bench-${history}-${Date.now()}`;
  const store = await Store.open(name);
  try {
    await store.write(['messages'], async (tx) => {
      for (let i = 1; i <= history; i++) {
        const ours = i % 2 === 0;
        await tx.addMessage({
          peer: 'bob',
          direction: ours ? 'out' : 'in',
          kind: 'text',
          text: TEXT,
          counter: BigInt(Math.ceil(i / 2)),
          sentAt: Date.now(),
          receivedAt: Date.now(),
          serverId: i,
          clientId: ours ? `c${i}` : null,
          status: ours ? 'delivered' : 'received',
          error: null,
          digest: null,
        });
      }
    });
    const settled = BigInt(Math.floor(history / 2) - 1);
    const isOurs = (m: Message): boolean => m.direction === 'out' && m.counter !== null;
    const reads = 200;
    const time = async (label: string, read: () => Promise<unknown>): Promise<BenchResult> => {
      const start = performance.now();
      for (let i = 0; i < reads; i++) await read();
      const ms = performance.now() - start;
      return { name: `${label}, ${history} messages kept`, messages: reads, ms, perSecond: (reads / ms) * 1000, microsPerMessage: (ms * 1000) / reads };
    };
    return [
      await time('arrival read: whole conversation', () => store.read(['messages'], (tx) => tx.history('bob'))),
      await time('arrival read: back to the last confirmed', () =>
        store.read(['messages'], (tx) => tx.newestFirst('bob', (m) => !isOurs(m) || (m.counter ?? 0n) > settled)),
      ),
    ];
  } finally {
    store.close();
    await Store.destroy(name);
  }
}

async function run(): Promise<BenchResult[]> {
  const results = [await conversation(2000, 1), await conversation(2000, 50)];
  for (const history of [100, 1000, 10000]) results.push(...(await arrivalReads(history)));
  const summary = document.getElementById('summary');
  if (summary !== null) summary.textContent = results.map((r) => `${r.name}: ${r.perSecond.toFixed(0)} msg/s`).join('; ');
  return results;
}

window.sottoBench = run();
