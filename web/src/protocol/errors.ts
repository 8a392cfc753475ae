/**
 * The protocol layer's one error type, with a stable `code` a caller can branch on.
 *
 * Codes are the names the shared test vectors and the Rust core use (`vectors.rs`:
 * `error_code`, `decrypt_error_code`, and the record and key errors), so both clients and the
 * vectors speak one vocabulary. Messages never contain key material or plaintext; `field` names
 * the JSON field a wire error is about, when there is one.
 */

/** Every code a {@link ProtocolError} may carry. */
export const ERROR_CODES = [
  // Keys and signatures (§2, §4).
  'InvalidPublicKey', // not a 65-byte uncompressed P-256 point on the curve
  'InvalidPrivateKey', // a JWK or CryptoKey that is not a P-256 private key of the right kind
  'InvalidKey', // a CryptoKey with the wrong algorithm, type or usages for what it is used for
  'NonContributoryKey', // an ECDH output of 32 zero bytes
  'InvalidSignature', // a signature that is not 64 bytes or does not verify
  'InvalidHost', // a login challenge host that is empty, too long or not printable ASCII
  // Wire decoding (§8).
  'Json', // not JSON, or not the expected shape: missing, unknown, duplicated or mistyped field
  'UnsupportedVersion', // a wire `version` or a record version other than 1
  'UnsupportedSuite', // a `suite` other than 1
  'InvalidBase64', // not canonical unpadded base64url
  'InvalidHex', // not lower-case hex (test vectors only)
  'InvalidLength', // a byte field of the wrong length
  'InvalidUserId', // a user id outside `^[a-z0-9][a-z0-9._-]{1,31}$` after lower-casing
  'InvalidCiphertextLength', // a ciphertext that is not a bucket size plus the 16-byte tag
  'OutOfRange', // a number beyond what its field allows (times beyond 2^53 − 1)
  // Records (§7).
  'InvalidPadding', // not ISO/IEC 7816-4 padding to a bucket size
  'Truncated', // a record shorter than its fixed header
  'InvalidText', // a text body that is empty or not UTF-8
  'InvalidReceipt', // a receipt with an unknown type, a bad count or trailing bytes
  'RecordTooLarge', // a record that does not fit the largest bucket
  'UnsupportedRecordKind', // an attempt to encode a kind this version cannot write
  // X3DH and sessions (§5, §6).
  'BundleUserMismatch', // the bundle is for another user than the one asked for
  'InvalidSignedPrekey', // the signed prekey cannot start a ratchet (non-contributory DH)
  'NoSession', // no session with this peer, and the message is not a prekey message
  'NoSendingChain', // a responder cannot send before it has received
  'ChainExhausted', // 2^32 messages in one sending chain
  'UnknownSignedPrekey', // a prekey message names a signed prekey this device does not have
  'UnknownOneTimePrekey', // a prekey message names a one-time prekey this device does not have
  'InvalidPrekeyMessage', // X3DH refused the prekey message's keys
  'DuplicateMessage', // the message was already decrypted, or its key was discarded
  'TooManySkipped', // the header asks to skip more than MAX_SKIP message keys
  'DecryptionFailed', // tampered, forged, for another session, or not a valid record inside
  'InvalidState', // stored session state that is not version 1 or is damaged
] as const;

/** A stable error code. */
export type ErrorCode = (typeof ERROR_CODES)[number];

/** An error of the protocol layer. Branch on `code`, never on `message`. */
export class ProtocolError extends Error {
  /** What went wrong, stable across versions and shared with the Rust core. */
  readonly code: ErrorCode;
  /** The JSON field concerned, for wire errors (e.g. `"header.dh"`). */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message?: string, field?: string) {
    super(field === undefined ? `${code}: ${message ?? code}` : `${code} (${field}): ${message ?? code}`);
    this.name = 'ProtocolError';
    this.code = code;
    this.field = field;
  }
}

/** Whether `error` is a {@link ProtocolError}, optionally with the given code. */
export function isProtocolError(error: unknown, code?: ErrorCode): error is ProtocolError {
  return error instanceof ProtocolError && (code === undefined || error.code === code);
}
