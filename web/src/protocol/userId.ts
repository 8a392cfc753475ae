/**
 * User ids (PROTOCOL.md §3): normalised to lower case with ASCII rules and checked against
 * `^[a-z0-9][a-z0-9._-]{1,31}$`.
 *
 * Ids go into the X3DH associated data and safety numbers, so each must have exactly one
 * spelling. Lower-casing is ASCII only: `String.prototype.toLowerCase` would turn the Kelvin sign
 * (U+212A) into `k`, letting two different inputs name one user.
 */

import { type Bytes, concatBytes } from './bytes.js';
import { ProtocolError } from './errors.js';

/** Shortest allowed user id. */
export const USER_ID_MIN_LENGTH = 2;
/** Longest allowed user id (it must also fit a one-byte length prefix). */
export const USER_ID_MAX_LENGTH = 32;

declare const userIdBrand: unique symbol;

/** A normalised, valid user id. */
export type UserId = string & { readonly [userIdBrand]: true };

const VALID = /^[a-z0-9][a-z0-9._-]{1,31}$/;

/** Normalises (ASCII lower case) and validates a user id; `InvalidUserId` otherwise. */
export function parseUserId(input: string): UserId {
  // Surrounding whitespace is an error, not trimmed: it fails the character check below.
  const normalised = input.replace(/[A-Z]/g, (c) => c.toLowerCase());
  if (!VALID.test(normalised)) {
    throw new ProtocolError('InvalidUserId', 'a user id has 2 to 32 characters a-z, 0-9, ".", "_", "-"');
  }
  return normalised as UserId;
}

/** The binary form used in associated data and signed messages: a length byte, then ASCII. */
export function encodeUserId(id: UserId): Bytes {
  return concatBytes(Uint8Array.of(id.length), userIdAscii(id));
}

/** The id's ASCII bytes without a length prefix (safety numbers, §9). */
export function userIdAscii(id: UserId): Bytes {
  const ascii = new Uint8Array(id.length);
  for (let i = 0; i < id.length; i++) ascii[i] = id.charCodeAt(i);
  return ascii;
}
