/**
 * In-page benchmark: the per-message cost of the protocol in this browser. A session between
 * two parties is set up once; then each round trip encrypts a 256-byte text record on one side
 * and decrypts it on the other (alternating directions every `turn` messages, so DH ratchet
 * steps are included as in a conversation), with the wire encoding and strict decoding of the
 * envelope in between, as the client does. Results go to `window.sottoBench`.
 */

import { noDigest, textRecord } from '../../src/protocol/record.js';
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

async function run(): Promise<BenchResult[]> {
  const results = [await conversation(2000, 1), await conversation(2000, 50)];
  const summary = document.getElementById('summary');
  if (summary !== null) summary.textContent = results.map((r) => `${r.name}: ${r.perSecond.toFixed(0)} msg/s`).join('; ');
  return results;
}

window.sottoBench = run();
