/** Record counters (src/app/counters.ts): gaps, late arrivals, repeats, new identities, bounds. */

import {
  CLOCK_SKEW_MS,
  emptyCounters,
  MAX_RECEIVED_ABOVE,
  missing,
  nextSent,
  noteLast,
  noteReceived,
  resetReceived,
  unconfirmed,
  unconfirmedByPeer,
} from '../../src/app/counters.js';
import { noDigest } from '../../src/protocol/record.js';
import { suite } from '../support/cases.js';
import { assert, assertBytes, assertEqual } from '../support/assert.js';

const d = noDigest();
/** The largest counter a record can carry (u64). */
const MAX_U64 = 2n ** 64n - 1n;

export const tests = suite('app/counters', {
  'in-order records leave no gap': async () => {
    let c = emptyCounters();
    for (const n of [1n, 2n, 3n]) c = noteReceived(c, n, d, 0n);
    assertEqual(c.receivedContiguous, 3n, 'contiguous');
    assertEqual(missing(c), 0n, 'missing');
    assertEqual(c.lastCounter, 3n, 'last counter');
  },
  'a jump is a gap; the late record closes it': async () => {
    let c = emptyCounters();
    c = noteReceived(c, 1n, d, 0n);
    c = noteReceived(c, 4n, d, 0n);
    assertEqual(missing(c), 2n, 'two missing');
    c = noteReceived(c, 3n, d, 0n);
    assertEqual(missing(c), 1n, 'one missing');
    c = noteReceived(c, 2n, d, 0n);
    assertEqual(missing(c), 0n, 'none missing');
    assertEqual(c.receivedContiguous, 4n, 'contiguous');
    assertEqual(c.receivedAbove.length, 0, 'nothing above');
  },
  'a repeat changes nothing but the last counter': async () => {
    let c = noteReceived(noteReceived(emptyCounters(), 1n, d, 0n), 2n, d, 0n);
    const again = noteReceived(c, 1n, d, 0n);
    assertEqual(again.receivedContiguous, 2n, 'contiguous');
    assertEqual(missing(again), 0n, 'missing');
    c = again;
  },
  'the first record seen sets where counting starts': async () => {
    const c = noteReceived(emptyCounters(), 7n, d, 0n);
    assertEqual(missing(c), 0n, 'joining midway is not a gap');
    assertEqual(missing(noteReceived(c, 9n, d, 0n)), 1n, 'a later jump is');
  },
  'a new identity starts its own count': async () => {
    let c = noteReceived(noteReceived(emptyCounters(), 1n, d, 0n), 2n, d, 0n);
    c = resetReceived(c);
    c = noteReceived(c, 1n, d, 0n);
    assertEqual(missing(c), 0n, 'no gap after a reset');
  },
  'a record that never arrives is given up on after a bounded number of later ones': async () => {
    let c = noteReceived(emptyCounters(), 1n, d, 0n);
    // Record 2 never comes; 1,500 later ones do.
    for (let n = 3n; n < 3n + 1500n; n++) {
      c = noteReceived(c, n, d, 0n);
      assert(c.receivedAbove.length <= MAX_RECEIVED_ABOVE, `at most ${MAX_RECEIVED_ABOVE} counters kept (${c.receivedAbove.length} at ${n})`);
      assertEqual(missing(c), 1n, `still one missing at ${n}`);
    }
    assertEqual(c.receivedContiguous, 1502n, 'counting went on past the gap');
    assertEqual(c.receivedAbove.length, 0, 'nothing above');
    assertEqual(c.missingForGood, 1n, 'record 2 is missing for good');
    // Too late now: it is not waited for any more, and stays counted.
    const late = noteReceived(c, 2n, d, 0n);
    assertEqual(missing(late), 1n, 'a late record 2 changes nothing');
    assertEqual(late.receivedContiguous, 1502n, 'contiguous');
    assertEqual(missing(resetReceived(late)), 0n, 'a new identity starts without it');
  },
  'the record that fills a gap at the cap gives nothing up': async () => {
    // Exactly MAX_RECEIVED_ABOVE above the gap of 2 and 3; then both arrive.
    let c = noteReceived(emptyCounters(), 1n, d, 0n);
    for (let n = 4n; n < 4n + BigInt(MAX_RECEIVED_ABOVE); n++) c = noteReceived(c, n, d, 0n);
    assertEqual(missing(c), 2n, 'two missing');
    c = noteReceived(c, 2n, d, 0n);
    assertEqual(missing(c), 1n, 'record 3 is still waited for');
    c = noteReceived(c, 3n, d, 0n);
    assertEqual(missing(c), 0n, 'everything arrived');
    assertEqual(c.receivedContiguous, 3n + BigInt(MAX_RECEIVED_ABOVE), 'contiguous to the newest');
  },
  'every other record missing: the list stays bounded and each arrival counts as before': async () => {
    let c = noteReceived(emptyCounters(), 1n, d, 0n);
    for (let n = 3n; n <= 5001n; n += 2n) {
      const before = missing(c);
      c = noteReceived(c, n, d, 0n);
      assertEqual(missing(c) - before, 1n, `one more missing at ${n}`);
      assert(c.receivedAbove.length <= MAX_RECEIVED_ABOVE, `bounded at ${n}`);
    }
    assertEqual(missing(c), 2500n, 'every even counter missing');
    // A late one that is still waited for is counted back; one given up on is not.
    const kept = c.receivedAbove[0];
    assert(kept !== undefined && kept > 2n, 'the oldest kept');
    assertEqual(missing(noteReceived(c, kept - 1n, d, 0n)), 2499n, 'a late record above the given-up part');
    assertEqual(missing(noteReceived(c, 2n, d, 0n)), 2500n, 'a late record 2: given up on');
  },
  'counters near 2^64 neither throw nor miscount': async () => {
    let c = noteReceived(emptyCounters(), 1n, d, 0n);
    c = noteReceived(c, MAX_U64, d, 0n);
    assertEqual(missing(c), MAX_U64 - 2n, 'a jump to the last counter');
    // The gap filled from the top down: each late record counts until the list is full; then
    // the rest of the gap is given up on, and records arriving in it change nothing.
    for (let n = MAX_U64 - 1n; n > MAX_U64 - 1n - BigInt(MAX_RECEIVED_ABOVE) - 5n; n--) c = noteReceived(c, n, d, MAX_U64);
    assert(c.receivedAbove.length <= MAX_RECEIVED_ABOVE, 'bounded');
    assertEqual(missing(c), MAX_U64 - 2n - BigInt(MAX_RECEIVED_ABOVE), 'arrivals counted until the list was full');
    assertEqual(c.receivedContiguous, MAX_U64, 'counted up to the last counter');
    assertEqual(c.peerReceived, MAX_U64, 'confirmation up to the last counter');
    const started = noteReceived(noteReceived(emptyCounters(), MAX_U64 - 1n, d, 0n), MAX_U64, d, 0n);
    assertEqual(started.receivedContiguous, MAX_U64, 'a count that starts at the top');
    assertEqual(missing(started), 0n, 'nothing missing');
  },
  'a record from an identity not accepted names what our next record names, nothing else': async () => {
    const c = noteReceived(noteReceived(nextSent(emptyCounters()), 1n, d, 1n), 3n, d, 1n);
    const digest = new Uint8Array(32).fill(7) as typeof d;
    const noted = noteLast(c, 1_000_000n, digest);
    assertEqual(noted.lastCounter, 1_000_000n, 'last counter');
    assertBytes(noted.lastDigest, digest, 'last digest');
    assertEqual(noted.receivedContiguous, c.receivedContiguous, 'contiguous as it was');
    assertEqual(noted.receivedAbove.join(), c.receivedAbove.join(), 'above as it was');
    assertEqual(noted.peerReceived, c.peerReceived, 'confirmation as it was');
    assertEqual(noted.sent, c.sent, 'sent as it was');
    assertEqual(missing(noted), missing(c), 'no gap opened');
  },
  'sent and confirmed counters': async () => {
    let c = emptyCounters();
    for (let i = 0; i < 5; i++) c = nextSent(c);
    assertEqual(c.sent, 5n, 'sent');
    assertEqual(unconfirmed(c), 5n, 'none confirmed');
    c = noteReceived(c, 1n, d, 3n);
    assertEqual(unconfirmed(c), 2n, 'two unconfirmed');
    c = noteReceived(c, 2n, d, 2n);
    assertEqual(c.peerReceived, 3n, 'confirmation never goes back');
    assert(Object.isFrozen(c) === false, 'plain objects');
  },
  'records the relay called delivered but the peer never received': async () => {
    const delivered = 1_000_000;
    const ours = [
      { counter: 1n, deliveredAt: delivered },
      { counter: 2n, deliveredAt: delivered },
      { counter: 3n, deliveredAt: null },
    ];
    const late = delivered + CLOCK_SKEW_MS + 1;
    assertEqual(unconfirmedByPeer(ours, 1n, late).map((m) => m.counter).join(), '2', 'record 2 withheld');
    assertEqual(unconfirmedByPeer(ours, 2n, late).length, 0, 'all delivered ones confirmed');
    assertEqual(unconfirmedByPeer(ours, 0n, delivered + 1000).length, 0, 'written before the delivery: no claim');
  },
});
