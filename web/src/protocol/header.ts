/**
 * The Double Ratchet message header (PROTOCOL.md §6.2): the sender's ratchet key and two
 * counters, sent in clear (as JSON, §8.3) and authenticated as part of the AEAD associated data:
 *
 *     header_bytes = version (u8 = 1) ‖ suite (u8 = 1) ‖ dh (65) ‖ pn (u32) ‖ n (u32)   (75 bytes)
 */

import { type Bytes, concatBytes, u32be } from './bytes.js';
import type { DhPublicKey } from './keys.js';
import { PROTOCOL_VERSION, SUITE } from './version.js';

/** Length of {@link encodeHeader}'s output. */
export const HEADER_LENGTH = 2 + 65 + 4 + 4;

/** A Double Ratchet header. */
export interface Header {
  /** The sender's current ratchet public key. */
  readonly dh: DhPublicKey;
  /** How many messages the sender sent in its previous sending chain (`u32`). */
  readonly pn: number;
  /** This message's number in the current sending chain, from 0 (`u32`). */
  readonly n: number;
}

/** `version ‖ suite ‖ dh ‖ pn ‖ n`, the form authenticated by the AEAD. */
export function encodeHeader(header: Header): Bytes {
  return concatBytes(Uint8Array.of(PROTOCOL_VERSION, SUITE), header.dh, u32be(header.pn), u32be(header.n));
}

/** The AEAD associated data of a message: `AD ‖ header_bytes`. */
export function messageAssociatedData(associatedData: Uint8Array, header: Header): Bytes {
  return concatBytes(associatedData, encodeHeader(header));
}
