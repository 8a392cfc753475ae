/**
 * Whole conversations through SessionRecord and the wire encoding: prekey messages, replies,
 * out-of-order delivery, duplicates, tampering, simultaneous initiation, storage round trips.
 */

import { initiateSession, MAX_PREVIOUS_SESSIONS, promoteSession, SessionRecord, emptySessionRecord } from '../../src/protocol/session.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/wire.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';
import { pair, TestParty } from '../support/parties.js';
import { snapshot } from '../support/state.js';

/** Flips one bit of the ciphertext of an envelope given as wire JSON. */
async function tamper(json: string): Promise<string> {
  const envelope = await decodeEnvelope(json);
  const ciphertext = envelope.ciphertext.slice();
  ciphertext[5] = (ciphertext[5] ?? 0) ^ 0x20;
  return encodeEnvelope({ ...envelope, ciphertext });
}

/** Asserts that `receiver.receive(sender, json)` fails with `code` and changes nothing. */
async function refused(receiver: TestParty, sender: TestParty, json: string, code: string): Promise<void> {
  const before = snapshot(receiver.record.state);
  await assertRejects(() => receiver.receive(sender, json), code, 'decryption');
  assertEqual(snapshot(receiver.record.state), before, `state after ${code}`);
}

/** A small seeded generator (mulberry32): replayable randomness for conversation tests. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Plays a random conversation: sends from either side, delivers pending messages in random
 * order, replays delivered ones now and then, and finally delivers everything left. Every
 * message must decrypt exactly once and every replay must be refused without a change.
 */
async function randomConversation(seed: number, actions: number): Promise<void> {
  const next = random(seed);
  const { alice, bob } = await pair();
  interface InFlight {
    readonly from: TestParty;
    readonly to: TestParty;
    readonly json: string;
    readonly text: string;
  }
  const pending: InFlight[] = [];
  const delivered: InFlight[] = [];
  const deliver = async (index: number): Promise<void> => {
    const [message] = pending.splice(index, 1);
    assert(message !== undefined, 'a pending message');
    await message.to.expect(message.from, message.json, message.text);
    delivered.push(message);
  };
  for (let i = 0; i < actions; i++) {
    const roll = next();
    if (roll < 0.45) {
      const from = next() < 0.5 || !bob.record.canEncrypt ? alice : bob;
      const to = from === alice ? bob : alice;
      const text = `seed ${seed} message ${i}`;
      pending.push({ from, to, json: await from.send(text), text });
    } else if (roll < 0.9 && pending.length > 0) {
      await deliver(Math.floor(next() * pending.length));
    } else if (delivered.length > 0) {
      const replay = delivered[Math.floor(next() * delivered.length)];
      assert(replay !== undefined, 'a delivered message');
      await refused(replay.to, replay.from, replay.json, 'DuplicateMessage');
    }
  }
  while (pending.length > 0) await deliver(Math.floor(next() * pending.length));
  assert(delivered.length >= actions / 4, `seed ${seed}: enough traffic (${delivered.length} messages)`);
  assertEqual(alice.record.state.sessions.length, 1, 'Alice has one session');
  assertEqual(bob.record.state.sessions.length, 1, 'Bob has one session');
}

export const tests = suite('protocol/session', {
  'a conversation in both directions; the prekey header stops after the first reply': async () => {
    const { alice, bob } = await pair();
    const a1 = await alice.send('hello bob');
    const a2 = await alice.send('still there?');
    assert((await decodeEnvelope(a2)).prekey !== null, 'every message before a reply is a prekey message');
    const first = await bob.expect(alice, a1, 'hello bob');
    assert(first.newSession, 'the first message starts a session');
    assertEqual(first.usedOneTimePrekey, 100, 'the one-time prekey is reported');
    assert(!bob.oneTimePrekeys.has(100), 'and deleted by the client');
    const second = await bob.expect(alice, a2, 'still there?');
    assert(!second.newSession, 'the second joins it');
    assertEqual(second.usedOneTimePrekey, null, 'and reports no prekey');
    await alice.expect(bob, await bob.send('yes'), 'yes');
    assert((await decodeEnvelope(await alice.send('good'))).prekey === null, 'no prekey header after the reply');
    for (let i = 0; i < 5; i++) {
      await bob.expect(alice, await alice.send(`a${i}`), `a${i}`);
      await alice.expect(bob, await bob.send(`b${i}`), `b${i}`);
    }
    assertEqual(alice.record.state.sessions.length, 1, 'Alice has one session');
    assertEqual(bob.record.state.sessions.length, 1, 'Bob has one session');
  },

  'out-of-order delivery within and across DH steps': async () => {
    const { alice, bob } = await pair();
    const a = [await alice.send('a0'), await alice.send('a1'), await alice.send('a2')];
    await bob.expect(alice, a[2] ?? '', 'a2'); // a prekey message that skips two
    await bob.expect(alice, a[0] ?? '', 'a0');
    const b = [await bob.send('b0'), await bob.send('b1')];
    await alice.expect(bob, b[1] ?? '', 'b1');
    const a3 = await alice.send('a3'); // a new chain on Alice's side
    await bob.expect(alice, a3, 'a3');
    await bob.expect(alice, a[1] ?? '', 'a1'); // from the chain before, after the DH step
    await alice.expect(bob, b[0] ?? '', 'b0');
    await alice.expect(bob, await bob.send('b2'), 'b2');
    assertEqual(bob.record.current?.ratchet.skipped.length, 0, 'Bob used every skipped key');
    assertEqual(alice.record.current?.ratchet.skipped.length, 0, 'Alice used every skipped key');
  },

  'duplicates are refused with DuplicateMessage and change nothing': async () => {
    const { alice, bob } = await pair();
    const a0 = await alice.send('a0');
    const a1 = await alice.send('a1');
    const a2 = await alice.send('a2');
    await bob.expect(alice, a0, 'a0');
    await refused(bob, alice, a0, 'DuplicateMessage'); // a resent prekey message: not a new session
    await bob.expect(alice, a2, 'a2');
    await bob.expect(alice, a1, 'a1'); // from the stored skipped keys
    await refused(bob, alice, a1, 'DuplicateMessage'); // a skipped key is used once
    await refused(bob, alice, a2, 'DuplicateMessage');
    await alice.expect(bob, await bob.send('b0'), 'b0');
    await bob.expect(alice, await alice.send('a3'), 'a3'); // Alice's second chain
    await refused(bob, alice, a2, 'DuplicateMessage'); // from a remembered earlier chain
    assertEqual(bob.record.state.sessions.length, 1, 'no session was added');
  },

  'tampered messages are refused with DecryptionFailed and change nothing': async () => {
    const { alice, bob } = await pair();
    const a0 = await alice.send('a0');
    await refused(bob, alice, await tamper(a0), 'DecryptionFailed');
    assertEqual(bob.record.state.sessions.length, 0, 'a tampered prekey message makes no session');
    assert(bob.oneTimePrekeys.has(100), 'and consumes no one-time prekey');
    await bob.expect(alice, a0, 'a0');
    const a1 = await alice.send('a1');
    await refused(bob, alice, await tamper(a1), 'DecryptionFailed'); // same chain
    const envelope = await decodeEnvelope(a1);
    const renumbered = encodeEnvelope({ ...envelope, header: { ...envelope.header, n: envelope.header.n + 3 } });
    await refused(bob, alice, renumbered, 'DecryptionFailed'); // the header is authenticated
    await bob.expect(alice, a1, 'a1');
    await alice.expect(bob, await bob.send('b0'), 'b0');
    const a2 = await alice.send('a2'); // first of a new chain: Bob tries a DH step on a copy
    await refused(bob, alice, await tamper(a2), 'DecryptionFailed');
    await bob.expect(alice, a2, 'a2');
  },

  'a tampered prekey message consumes nothing; prekeys it names must exist': async () => {
    const alice = await TestParty.create('alice');
    const bob = await TestParty.create('bob', 1);
    const bundle = await bob.bundle();
    await alice.record.initiate(alice.local, bob.userId, bundle);
    const a0 = await alice.send('a0');
    await bob.expect(alice, a0, 'a0');
    // A second initiator using the same, now deleted, one-time prekey.
    const carol = await TestParty.create('alice');
    await carol.record.initiate(carol.local, bob.userId, bundle);
    await refused(bob, carol, await carol.send('c0'), 'UnknownOneTimePrekey');
    const dave = await TestParty.create('alice');
    await dave.record.initiate(dave.local, bob.userId, await bob.bundle(false));
    const d0 = await decodeEnvelope(await dave.send('d0'));
    const prekey = d0.prekey;
    assert(prekey !== null, 'a prekey message');
    const unknownSpk = encodeEnvelope({ ...d0, prekey: { ...prekey, signedPrekeyId: 9 } });
    await refused(bob, dave, unknownSpk, 'UnknownSignedPrekey');
  },

  'without a session: NoSession': async () => {
    const { alice, bob } = await pair();
    await bob.expect(alice, await alice.send('a0'), 'a0');
    const b0 = await bob.send('b0');
    const stranger = await TestParty.create('alice');
    await refused(stranger, bob, b0, 'NoSession');
    await assertRejects(() => stranger.record.encrypt(stranger.text('hi')), 'NoSession', 'encrypt without a session');
  },

  'simultaneous initiation converges on the session a reply arrives on': async () => {
    const alice = await TestParty.create('alice');
    const bob = await TestParty.create('bob');
    await alice.record.initiate(alice.local, bob.userId, await bob.bundle());
    await bob.record.initiate(bob.local, alice.userId, await alice.bundle());
    const a0 = await alice.send('from alice');
    const b0 = await bob.send('from bob');
    await bob.expect(alice, a0, 'from alice'); // Bob: Alice's session becomes current
    await alice.expect(bob, b0, 'from bob'); // Alice: Bob's session becomes current
    assertEqual(alice.record.state.sessions.length, 2, 'Alice holds both sessions');
    assertEqual(bob.record.state.sessions.length, 2, 'Bob holds both sessions');
    // Each replies on its current session; each reply lands on the other's older session.
    const a1 = await alice.send('alice again');
    const b1 = await bob.send('bob again');
    await bob.expect(alice, a1, 'alice again');
    await alice.expect(bob, b1, 'bob again');
    // Keep talking until both use the same session: no message may be lost on the way.
    for (let i = 0; i < 3; i++) {
      await bob.expect(alice, await alice.send(`a${i}`), `a${i}`);
      await alice.expect(bob, await bob.send(`b${i}`), `b${i}`);
    }
    const aliceBase = alice.record.current?.baseKey;
    const bobBase = bob.record.current?.baseKey;
    assert(aliceBase !== undefined && bobBase !== undefined, 'both have a current session');
    assertEqual(snapshot(aliceBase), snapshot(bobBase), 'both sides use the same session');
  },

  'state survives a structured clone (as IndexedDB stores it)': async () => {
    const { alice, bob } = await pair();
    await bob.expect(alice, await alice.send('a0'), 'a0');
    const late = await alice.send('late');
    await bob.expect(alice, await alice.send('a2'), 'a2');
    const restored = new SessionRecord(structuredClone(bob.record.state));
    assertEqual(snapshot(restored.state).length > 0, true, 'restored');
    const decrypted = await restored.decrypt(bob.local, alice.userId, await decodeEnvelope(late), bob.prekeys);
    assertEqual(decrypted.record.body.kind === 'text' ? decrypted.record.body.text : '', 'late', 'a skipped key survived');
    const { envelope } = await restored.encrypt(bob.text('reply'));
    await alice.expect(bob, encodeEnvelope(envelope), 'reply');
    await assertRejects(() => Promise.resolve(new SessionRecord({ ...emptySessionRecord(), version: 2 as 1 })), 'UnsupportedVersion', 'a newer state version');
    await assertRejects(
      () => Promise.resolve(new SessionRecord({ version: 1, sessions: [{} as never] })),
      'InvalidState',
      'a damaged state',
    );
  },

  'random conversations with reordering and replays: every message decrypts once': async () => {
    for (const seed of [1, 2, 3]) await randomConversation(seed, 80);
  },

  'operations on one record are queued, never interleaved': async () => {
    const { alice, bob } = await pair();
    const sent = await Promise.all([0, 1, 2, 3].map((i) => alice.record.encrypt(alice.text(`m${i}`))));
    assertEqual(sent.map((s) => s.envelope.header.n).join(','), '0,1,2,3', 'message numbers');
    for (const [i, s] of sent.entries()) await bob.expect(alice, encodeEnvelope(s.envelope), `m${i}`);
  },

  'a record keeps the current session and at most 8 earlier ones': async () => {
    const alice = await TestParty.create('alice');
    const bob = await TestParty.create('bob');
    const bundle = await bob.bundle();
    let state = emptySessionRecord();
    for (let i = 0; i < MAX_PREVIOUS_SESSIONS + 3; i++) {
      state = promoteSession(state, await initiateSession(alice.local, bob.userId, bundle));
    }
    assertEqual(state.sessions.length, 1 + MAX_PREVIOUS_SESSIONS, 'sessions kept');
  },

  'a bundle must be the peer\'s': async () => {
    const alice = await TestParty.create('alice');
    const bob = await TestParty.create('bob');
    const carol = await TestParty.create('carol');
    const bundle = await bob.bundle();
    await assertRejects(() => initiateSession(alice.local, carol.userId, bundle), 'BundleUserMismatch', 'bundle of another user');
  },
});
