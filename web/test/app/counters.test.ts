/** Record counters (src/app/counters.ts): gaps, late arrivals, repeats, new identities. */

import { CLOCK_SKEW_MS, emptyCounters, missing, nextSent, noteReceived, resetReceived, unconfirmed, unconfirmedByPeer } from '../../src/app/counters.js';
import { noDigest } from '../../src/protocol/record.js';
import { suite } from '../support/cases.js';
import { assert, assertEqual } from '../support/assert.js';

const d = noDigest();

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
