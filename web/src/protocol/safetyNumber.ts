/**
 * Safety numbers (PROTOCOL.md §9): what two people compare to know that no one sits between
 * them.
 *
 *     h_0     = version (u16 = 1) ‖ IKs ‖ IKd ‖ user id (ASCII, no length byte)
 *     h_(i+1) = SHA-512(h_i ‖ IKs ‖ IKd), 5,200 times
 *     digits  = 6 × (5-byte chunk as a 40-bit number mod 100,000, 5 digits)  → 30 per user
 *     number  = the two 30-digit halves sorted (as strings) and joined       → 60 digits
 *     QR      = 0x01 ‖ fingerprint[..32] of the lower half ‖ fingerprint[..32] of the higher half
 *
 * This is Signal's numeric fingerprint, with both identity keys of a Sotto identity hashed
 * together as the "public key".
 */

import { type Bytes, concatBytes, constantTimeEqual, u16be } from './bytes.js';
import type { DhPublicKey, SigningPublicKey } from './keys.js';
import { type UserId, userIdAscii } from './userId.js';

/** Version hashed into every fingerprint. */
export const FINGERPRINT_VERSION = 1;
/** SHA-512 iterations per fingerprint. */
export const FINGERPRINT_ITERATIONS = 5200;
/** Version byte of the QR payload. */
export const QR_VERSION = 1;
/** Length of the QR payload. */
export const QR_LENGTH = 1 + 32 + 32;

/** The public keys a fingerprint covers (a {@link PublicIdentity} has them). */
export interface FingerprintKeys {
  /** `IKs`. */
  readonly signing: SigningPublicKey;
  /** `IKd`. */
  readonly dh: DhPublicKey;
}

/** The safety number of a conversation. */
export interface SafetyNumber {
  /** 60 digits. */
  readonly digits: string;
  /** The 60 digits as 12 groups of 5, separated by spaces. */
  readonly grouped: string;
  /** The 65 bytes a QR code carries (written into the code as base64url text). */
  readonly qr: Bytes;
}

/** One user's 64-byte fingerprint. */
export async function fingerprint(user: UserId, identity: FingerprintKeys): Promise<Bytes> {
  const keys = concatBytes(identity.signing, identity.dh);
  let hash: Bytes = concatBytes(u16be(FINGERPRINT_VERSION), keys, userIdAscii(user));
  for (let i = 0; i < FINGERPRINT_ITERATIONS; i++) {
    hash = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-512', concatBytes(hash, keys)));
  }
  return hash;
}

/** The 30 digits of one fingerprint. */
export function fingerprintDigits(fingerprint: Uint8Array): string {
  let out = '';
  for (let chunk = 0; chunk < 6; chunk++) {
    // 40 bits fit a JavaScript number exactly (2^40 < 2^53).
    let value = 0;
    for (let i = 0; i < 5; i++) value = value * 256 + (fingerprint[5 * chunk + i] ?? 0);
    out += String(value % 100_000).padStart(5, '0');
  }
  return out;
}

/**
 * Computes the safety number of two users. The order of the arguments does not matter: both
 * people get the same number and the same QR bytes.
 */
export async function safetyNumber(
  userA: UserId,
  identityA: FingerprintKeys,
  userB: UserId,
  identityB: FingerprintKeys,
): Promise<SafetyNumber> {
  const [a, b] = await Promise.all([fingerprint(userA, identityA), fingerprint(userB, identityB)]);
  const halves = [
    { digits: fingerprintDigits(a), fingerprint: a },
    { digits: fingerprintDigits(b), fingerprint: b },
  ].sort((x, y) => (x.digits < y.digits ? -1 : x.digits > y.digits ? 1 : 0));
  const [low, high] = halves as [(typeof halves)[0], (typeof halves)[0]];
  const digits = low.digits + high.digits;
  const qr = concatBytes(Uint8Array.of(QR_VERSION), low.fingerprint.subarray(0, 32), high.fingerprint.subarray(0, 32));
  return { digits, grouped: (digits.match(/.{5}/g) ?? []).join(' '), qr };
}

/** Whether a scanned QR payload matches, compared in constant time. */
export function matchesQr(number: SafetyNumber, scanned: Uint8Array): boolean {
  return scanned.length === QR_LENGTH && constantTimeEqual(number.qr, scanned);
}
