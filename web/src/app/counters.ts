/**
 * A conversation's record counters (PROTOCOL.md §7.1, §7.3): what we number our records with,
 * and what we learn from the peer's.
 *
 * Every record carries the sender's running `counter` and the counter and digest of the last
 * record it received from us. Both are inside the encryption, so the relay can neither read nor
 * change them: a jump in the peer's counter means the relay (or a lost device) withheld
 * records, and the peer's `lastReceivedCounter` tells us which of ours actually arrived. The
 * same rules as the Rust client's `Counters` (crates/client/src/store.rs), so both clients
 * report the same gaps.
 *
 * Values are immutable; every function returns a new one.
 */

import type { MessageDigest } from '../protocol/record.js';
import { noDigest } from '../protocol/record.js';

export interface Counters {
  /** Records we sent to the peer; the next one gets `sent + 1`. */
  readonly sent: bigint;
  /** Every peer record up to this counter has arrived. */
  readonly receivedContiguous: bigint;
  /**
   * Peer counters that arrived above the contiguous prefix, ascending; at most
   * {@link MAX_RECEIVED_ABOVE}, since it is kept in the conversation's row and searched on
   * every arrival.
   */
  readonly receivedAbove: readonly bigint[];
  /**
   * Peer records below `receivedContiguous` that never arrived and are no longer waited for
   * (see {@link MAX_RECEIVED_ABOVE}): still counted by {@link missing}. Absent in rows saved
   * before it existed, which is 0.
   */
  readonly missingForGood?: bigint;
  /** The counter of the last peer record received (what our next record names). */
  readonly lastCounter: bigint;
  /** Its digest. */
  readonly lastDigest: MessageDigest;
  /** The highest of our counters the peer says it received. */
  readonly peerReceived: bigint;
}

export function emptyCounters(): Counters {
  return { sent: 0n, receivedContiguous: 0n, receivedAbove: [], lastCounter: 0n, lastDigest: noDigest(), peerReceived: 0n };
}

/**
 * How many counters above a gap are remembered. A record that never arrives (withheld, or lost
 * with a device) would otherwise make every later arrival grow the list for good; past this
 * many, the gaps below the oldest ones kept are given up on: counted missing for good, and a
 * record that fills one later no longer withdraws it.
 */
export const MAX_RECEIVED_ABOVE = 1000;

/** Takes the next counter for a record we send. */
export function nextSent(counters: Counters): Counters {
  return { ...counters, sent: counters.sent + 1n };
}

/**
 * Notes that the peer's record `counter` arrived, naming our `lastReceivedCounter`.
 *
 * The first record ever seen from a peer (or from a peer's new identity, after `resetReceived`)
 * sets where counting starts, so joining a conversation midway is not a gap.
 */
export function noteReceived(
  counters: Counters,
  counter: bigint,
  digest: MessageDigest,
  theirLastReceived: bigint,
): Counters {
  let contiguous = counters.receivedContiguous;
  let above = counters.receivedAbove;
  let forGood = counters.missingForGood ?? 0n;
  if (contiguous === 0n && above.length === 0 && counter > 0n) contiguous = counter - 1n;
  const at = insertionPoint(above, counter);
  if (counter > contiguous && above[at] !== counter) {
    const grown = [...above.slice(0, at), counter, ...above.slice(at)];
    let first = 0;
    while (grown[first] === contiguous + 1n) {
      first++;
      contiguous += 1n;
    }
    // Only what is still above a gap once the prefix has advanced counts against the cap: a
    // record that fills the gap must not push out the one right after it.
    if (grown.length - first > MAX_RECEIVED_ABOVE) {
      // Give up on the gaps below the oldest counter kept: what lies between the contiguous
      // prefix and it, less the records that did arrive, is missing for good.
      const skipped = grown.length - first - MAX_RECEIVED_ABOVE;
      first += skipped;
      const oldestKept = grown[first] ?? counter;
      forGood += oldestKept - 1n - contiguous - BigInt(skipped);
      contiguous = oldestKept - 1n;
      while (grown[first] === contiguous + 1n) {
        first++;
        contiguous += 1n;
      }
    }
    above = grown.slice(first);
  }
  return {
    ...counters,
    receivedContiguous: contiguous,
    receivedAbove: above,
    ...(forGood === 0n ? {} : { missingForGood: forGood }),
    lastCounter: counter,
    lastDigest: digest,
    peerReceived: theirLastReceived > counters.peerReceived ? theirLastReceived : counters.peerReceived,
  };
}

/** Where `value` goes in the ascending `list` (the index of the first element not below it). */
function insertionPoint(list: readonly bigint[], value: bigint): number {
  let low = 0;
  let high = list.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((list[middle] ?? value) < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

/**
 * Notes what our next record names (the peer's last record and its digest) and nothing else:
 * for a record from an identity the user has not accepted, which must neither confirm our
 * records nor open or close gaps in the count.
 */
export function noteLast(counters: Counters, counter: bigint, digest: MessageDigest): Counters {
  return { ...counters, lastCounter: counter, lastDigest: digest };
}

/** Forgets what was received (a new identity starts its own count). */
export function resetReceived(counters: Counters): Counters {
  const { missingForGood: _forgotten, ...rest } = counters;
  return { ...rest, receivedContiguous: 0n, receivedAbove: [] };
}

/** How many peer records are missing: counters below the highest seen that never arrived. */
export function missing(counters: Counters): bigint {
  const highest = counters.receivedAbove.at(-1) ?? counters.receivedContiguous;
  return highest - counters.receivedContiguous - BigInt(counters.receivedAbove.length) + (counters.missingForGood ?? 0n);
}

/** How many of our records the peer has not yet confirmed receiving. */
export function unconfirmed(counters: Counters): bigint {
  return counters.sent > counters.peerReceived ? counters.sent - counters.peerReceived : 0n;
}

/** Clock difference tolerated between two devices when comparing their times. */
export const CLOCK_SKEW_MS = 5 * 60 * 1000;

/** What {@link unconfirmedByPeer} needs to know of one of our messages. */
export interface SentRecord {
  readonly counter: bigint;
  /** When the relay reported it delivered (our clock), if it did. */
  readonly deliveredAt: number | null;
}

/**
 * Our records the relay reported delivered that the peer's newer record says never arrived:
 * the peer's record was written (its `sentAt`, the peer's clock) well after the relay said
 * the peer's device had saved ours, yet names an earlier counter as the last one received.
 * An honest relay never produces this; a relay that acknowledges on the peer's behalf and
 * withholds the message does.
 */
export function unconfirmedByPeer<T extends SentRecord>(ours: readonly T[], theirLastReceived: bigint, theirSentAt: number): T[] {
  return ours.filter(
    (m) => m.counter > theirLastReceived && m.deliveredAt !== null && theirSentAt > m.deliveredAt + CLOCK_SKEW_MS,
  );
}
