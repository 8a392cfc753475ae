/**
 * The ratchet's bounds (PROTOCOL.md §6.4): MAX_SKIP, the cap on stored skipped keys with the
 * oldest evicted, and the number of earlier chains remembered for duplicate detection.
 */

import type { MessageKey } from '../../src/protocol/kdf.js';
import { MAX_SKIP, MAX_SKIPPED_KEYS, REMEMBERED_CHAINS, type SkippedKey } from '../../src/protocol/ratchet.js';
import { SessionRecord } from '../../src/protocol/session.js';
import { assert, assertEqual, assertRejects } from '../support/assert.js';
import { suite } from '../support/cases.js';
import { pair, type TestParty } from '../support/parties.js';
import { snapshot } from '../support/state.js';

async function refused(receiver: TestParty, sender: TestParty, json: string, code: string): Promise<void> {
  const before = snapshot(receiver.record.state);
  await assertRejects(() => receiver.receive(sender, json), code, 'decryption');
  assertEqual(snapshot(receiver.record.state), before, `state after ${code}`);
}

/** Replaces the receiver's record with one whose current session has other skipped keys. */
function withSkipped(party: TestParty, skipped: readonly SkippedKey[]): SessionRecord {
  const [current, ...rest] = party.record.state.sessions;
  assert(current !== undefined, 'a session');
  return new SessionRecord({
    version: 1,
    sessions: [{ ...current, ratchet: { ...current.ratchet, skipped } }, ...rest],
  });
}

export const tests = suite('protocol/ratchet', {
  [`a header may skip at most MAX_SKIP (${MAX_SKIP}) keys`]: async () => {
    const { alice, bob } = await pair();
    const sent: string[] = [];
    for (let i = 0; i <= MAX_SKIP + 1; i++) sent.push(await alice.send(`m${i}`));
    // n = 1001 would skip 1001 keys of a new chain.
    await refused(bob, alice, sent[MAX_SKIP + 1] ?? '', 'TooManySkipped');
    assertEqual(bob.record.state.sessions.length, 0, 'no session was made');
    await bob.expect(alice, sent[MAX_SKIP] ?? '', `m${MAX_SKIP}`); // skips exactly 1000
    assertEqual(bob.record.current?.ratchet.skipped.length, MAX_SKIP, 'keys stored');
    await bob.expect(alice, sent[0] ?? '', 'm0');
    await bob.expect(alice, sent[MAX_SKIP + 1] ?? '', `m${MAX_SKIP + 1}`);
    await bob.expect(alice, sent[500] ?? '', 'm500');
    assertEqual(bob.record.current?.ratchet.skipped.length, MAX_SKIP - 2, 'keys left');
  },

  [`at most ${MAX_SKIPPED_KEYS} skipped keys are kept, the oldest evicted`]: async () => {
    const { alice, bob } = await pair();
    const m = [await alice.send('m0'), await alice.send('m1'), await alice.send('m2')];
    await bob.expect(alice, m[2] ?? '', 'm2'); // skips m0 and m1
    const real = bob.record.current?.ratchet.skipped ?? [];
    assertEqual(real.length, 2, 'two real skipped keys');
    // Fill the store: the two real keys are the oldest, then filler up to the cap.
    const fillerKey = real[0]?.ratchetKey;
    assert(fillerKey !== undefined, 'a ratchet key');
    const filler: SkippedKey[] = [];
    for (let i = 0; filler.length + real.length < MAX_SKIPPED_KEYS; i++) {
      filler.push({ ratchetKey: fillerKey, n: 100_000 + i, messageKey: new Uint8Array(32).fill(7) as MessageKey });
    }
    bob.record = withSkipped(bob, [...real, ...filler]);
    const m3 = await alice.send('m3');
    const m4 = await alice.send('m4');
    await bob.expect(alice, m4, 'm4'); // skips m3: the store is full, so m0's key goes
    const skipped = bob.record.current?.ratchet.skipped ?? [];
    assertEqual(skipped.length, MAX_SKIPPED_KEYS, 'the store stays at its cap');
    assertEqual(skipped[0]?.n, 1, 'the oldest key left is m1\'s');
    await refused(bob, alice, m[0] ?? '', 'DuplicateMessage'); // its key was evicted
    await bob.expect(alice, m[1] ?? '', 'm1');
    await bob.expect(alice, m3, 'm3');
  },

  [`duplicates are recognised from the last ${REMEMBERED_CHAINS} receiving chains`]: async () => {
    const { alice, bob } = await pair();
    const first = await alice.send('first chain');
    await bob.expect(alice, first, 'first chain');
    const roundTrip = async (i: number): Promise<void> => {
      await alice.expect(bob, await bob.send(`b${i}`), `b${i}`);
      await bob.expect(alice, await alice.send(`a${i}`), `a${i}`); // ends one of Bob's chains
    };
    for (let i = 0; i < REMEMBERED_CHAINS; i++) await roundTrip(i);
    assertEqual(bob.record.current?.ratchet.previousRemoteKeys.length, REMEMBERED_CHAINS, 'chains remembered');
    await refused(bob, alice, first, 'DuplicateMessage'); // the first chain is the oldest remembered
    await roundTrip(REMEMBERED_CHAINS);
    assertEqual(bob.record.current?.ratchet.previousRemoteKeys.length, REMEMBERED_CHAINS, 'still at the bound');
    // Now the first chain is forgotten: the message is tried as a new chain, fails to
    // authenticate, and still changes nothing.
    await refused(bob, alice, first, 'DecryptionFailed');
    await alice.expect(bob, await bob.send('b-last'), 'b-last');
    const recent = await alice.send('recent');
    await bob.expect(alice, recent, 'recent');
    await alice.expect(bob, await bob.send('b-next'), 'b-next');
    await bob.expect(alice, await alice.send('a-next'), 'a-next');
    await refused(bob, alice, recent, 'DuplicateMessage');
  },
});
