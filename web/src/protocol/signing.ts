/**
 * The messages signed by a user's identity signing key `IKs` (PROTOCOL.md §4.1).
 *
 *     message = label (ASCII) ‖ 0x00 ‖ fields
 *
 * Each purpose has its own label, so a signature made for one can never be presented as
 * another.
 */

import { type Bytes, concatBytes, u32be, u64be } from './bytes.js';
import { ProtocolError } from './errors.js';
import type { DhPublicKey, SigningPublicKey } from './keys.js';
import { SUITE } from './version.js';
import { encodeUserId, type UserId } from './userId.js';

/** Label of the signature binding `IKd` to `IKs`. */
export const IDENTITY_BINDING_LABEL = 'Sotto v1 identity dh key';
/** Label of a signed prekey's signature. */
export const SIGNED_PREKEY_LABEL = 'Sotto v1 signed prekey';
/** Label of a login challenge signature. */
export const AUTHENTICATION_LABEL = 'Sotto v1 authentication';

/** Length of the relay's login challenge nonce. */
export const CHALLENGE_NONCE_LENGTH = 32;
/** Longest host a challenge may bind (it must fit a one-byte length prefix). */
export const MAX_HOST_LENGTH = 255;

function labelled(label: string, ...fields: readonly Uint8Array[]): Bytes {
  return concatBytes(new TextEncoder().encode(label), Uint8Array.of(0), ...fields);
}

/** `"Sotto v1 identity dh key" ‖ 0x00 ‖ suite ‖ IKs ‖ IKd` */
export function identityBindingMessage(signing: SigningPublicKey, dh: DhPublicKey): Bytes {
  return labelled(IDENTITY_BINDING_LABEL, Uint8Array.of(SUITE), signing, dh);
}

/**
 * `"Sotto v1 signed prekey" ‖ 0x00 ‖ suite ‖ IKs ‖ id (u32) ‖ created_at (u64) ‖ SPK`
 *
 * `createdAt` is in Unix seconds.
 */
export function signedPrekeyMessage(
  signing: SigningPublicKey,
  id: number,
  createdAt: number,
  key: DhPublicKey,
): Bytes {
  return labelled(SIGNED_PREKEY_LABEL, Uint8Array.of(SUITE), signing, u32be(id), u64be(createdAt), key);
}

/**
 * `"Sotto v1 authentication" ‖ 0x00 ‖ host ‖ user id ‖ nonce`, host and user id each with a
 * one-byte length prefix.
 *
 * `host` is the authority (host and port) the client connected to, so a signature made for one
 * relay cannot be replayed to another. It must be 1 to 255 printable ASCII characters
 * (`InvalidHost`).
 */
export function authenticationMessage(host: string, user: UserId, nonce: Uint8Array): Bytes {
  if (host.length === 0 || host.length > MAX_HOST_LENGTH || !/^[\x21-\x7e]+$/.test(host)) {
    throw new ProtocolError('InvalidHost', 'a host is 1 to 255 printable ASCII characters');
  }
  if (nonce.length !== CHALLENGE_NONCE_LENGTH) {
    throw new ProtocolError('InvalidLength', 'a challenge nonce is 32 bytes', 'nonce');
  }
  const hostBytes = new TextEncoder().encode(host);
  return labelled(AUTHENTICATION_LABEL, Uint8Array.of(hostBytes.length), hostBytes, encodeUserId(user), nonce);
}
