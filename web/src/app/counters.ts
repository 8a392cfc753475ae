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
  /** Peer counters that arrived above the contiguous prefix, ascending. */
  readonly receivedAbove: readonly bigint[];
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
  let above = [...counters.receivedAbove];
  if (contiguous === 0n && above.length === 0 && counter > 0n) contiguous = counter - 1n;
  if (counter > contiguous && !above.includes(counter)) {
    above.push(counter);
    above.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    while (above[0] === contiguous + 1n) {
      above = above.slice(1);
      contiguous += 1n;
    }
  }
  return {
    ...counters,
    receivedContiguous: contiguous,
    receivedAbove: above,
    lastCounter: counter,
    lastDigest: digest,
    peerReceived: theirLastReceived > counters.peerReceived ? theirLastReceived : counters.peerReceived,
  };
}

/** Forgets what was received (a new identity starts its own count). */
export function resetReceived(counters: Counters): Counters {
  return { ...counters, receivedContiguous: 0n, receivedAbove: [] };
}

/** How many peer records are missing: counters below the highest seen that never arrived. */
export function missing(counters: Counters): bigint {
  const highest = counters.receivedAbove.at(-1) ?? counters.receivedContiguous;
  return highest - counters.receivedContiguous - BigInt(counters.receivedAbove.length);
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
