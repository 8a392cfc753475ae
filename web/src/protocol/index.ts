/**
 * Sotto's protocol layer for the browser: P-256 X3DH, the Double Ratchet, typed plaintext
 * records, safety numbers and the JSON wire types, on the Web Crypto API alone. It is
 * byte-compatible with the Rust core (`crates/protocol`); docs/PROTOCOL.md is the reference and
 * section numbers in the module docs refer to it; `test-vectors/` pins both.
 *
 * The layer does no I/O. Sockets, storage and the clock belong to the caller; randomness comes
 * from Web Crypto, except where a {@link KeySource} is passed in (ephemeral and ratchet keys), so
 * tests can replay the keys a test vector names.
 *
 * # Layout (bottom-up)
 *
 * | concept                                        | module              |
 * |------------------------------------------------|---------------------|
 * | errors with stable codes                       | `errors.ts`         |
 * | hex / base64url, integers, constant-time equal | `bytes.ts`          |
 * | strict JSON parsing                            | `json.ts`           |
 * | P-256 keys, ECDH, ECDSA                        | `keys.ts`           |
 * | user ids                                       | `userId.ts`         |
 * | domain-separated signed messages               | `signing.ts`        |
 * | identity keys (`IKs` + `IKd`)                  | `identity.ts`       |
 * | signed and one-time prekeys, bundles           | `prekeys.ts`        |
 * | HKDF / HMAC steps, AES-GCM                     | `kdf.ts`, `aead.ts` |
 * | X3DH                                           | `x3dh.ts`           |
 * | plaintext records and padding                  | `record.ts`         |
 * | ratchet header                                 | `header.ts`         |
 * | Double Ratchet                                 | `ratchet.ts`        |
 * | a peer's sessions, prekey-message routing      | `session.ts`        |
 * | JSON wire types                                | `wire.ts`           |
 * | safety numbers                                 | `safetyNumber.ts`   |
 *
 * # State and storage
 *
 * Identity keys, prekeys and session records are plain objects of `Uint8Array`s, numbers,
 * strings and non-extractable `CryptoKey`s: they survive IndexedDB's structured clone as they
 * are, and a session record carries `version: 1`. State is never mutated in place: operations
 * return a new state, and a failed decryption returns none, so the stored state stays as it was.
 *
 * # Sending and receiving
 *
 *     const bundle = await decodeBundleJson(answerFromRelay);        // verifies both signatures
 *     const record = new SessionRecord(storedStateOrUndefined);
 *     if (!record.canEncrypt) await record.initiate(local, peer, bundle);
 *     const { envelope } = await record.encrypt(textRecord('hi', { sentAt, counter, … }));
 *     send(envelopeToJson(envelope));
 *
 *     const envelope = await decodeEnvelopeJson(payload);
 *     const result = await record.decrypt(local, sender, envelope, prekeyStore);
 *     // save record.state; then delete result.usedOneTimePrekey, if any
 *
 * Errors are {@link ProtocolError}s; branch on `code`.
 */

export { ERROR_CODES, type ErrorCode, isProtocolError, ProtocolError } from './errors.js';
export {
  type Bytes,
  constantTimeEqual,
  fromBase64Url,
  fromHex,
  toBase64Url,
  toHex,
} from './bytes.js';
export { PROTOCOL_VERSION, SUITE } from './version.js';
export {
  decodeDhPublicKey,
  decodeSigningPublicKey,
  type DhKeyPair,
  type DhPublicKey,
  type EcPrivateJwk,
  generateDhKeyPair,
  generateSigningKeyPair,
  importDhKeyPairJwk,
  importSigningKeyPairJwk,
  type KeySource,
  PUBLIC_KEY_LENGTH,
  samePublicKey,
  SIGNATURE_LENGTH,
  type SigningKeyPair,
  type SigningPublicKey,
} from './keys.js';
export { encodeUserId, parseUserId, type UserId } from './userId.js';
export {
  authenticationMessage,
  CHALLENGE_NONCE_LENGTH,
  identityBindingMessage,
  signedPrekeyMessage,
} from './signing.js';
export {
  generateIdentity,
  identityFromKeyPairs,
  identityFromParts,
  type IdentityKeyPair,
  type PublicIdentity,
  sameIdentityKeys,
  verifyPublicIdentity,
} from './identity.js';
export {
  createBundle,
  generateOneTimePrekey,
  generateSignedPrekey,
  type OneTimePrekey,
  type OneTimePrekeyPublic,
  type PrekeyBundle,
  type PrekeyLookup,
  publicOneTimePrekey,
  publicSignedPrekey,
  restoreSignedPrekey,
  type SignedPrekey,
  type SignedPrekeyPublic,
  signPrekey,
  verifySignedPrekey,
} from './prekeys.js';
export {
  decodeRecord,
  encodeRecord,
  MAX_RECEIPT_COUNTERS,
  MAX_TEXT_LENGTH,
  type MessageDigest,
  noDigest,
  type PlaintextRecord,
  type Receipt,
  type RecordBody,
  recordDigest,
  textRecord,
} from './record.js';
export { type Header } from './header.js';
export { MAX_SKIP, MAX_SKIPPED_KEYS, type RatchetState, REMEMBERED_CHAINS, type SkippedKey } from './ratchet.js';
export {
  checkSessionRecordState,
  type Decrypted,
  emptySessionRecord,
  type Encrypted,
  initiateSession,
  type LocalParty,
  MAX_PREVIOUS_SESSIONS,
  type PendingPrekey,
  promoteSession,
  SESSION_STATE_VERSION,
  SessionRecord,
  sessionRecordCanEncrypt,
  sessionRecordDecrypt,
  sessionRecordEncrypt,
  type SessionRecordState,
  type SessionState,
} from './session.js';
export {
  type BundleJson,
  bundleToJson,
  decodeBundle,
  decodeBundleJson,
  decodeEnvelope,
  decodeEnvelopeJson,
  decodePublicIdentityJson,
  encodeBundle,
  encodeEnvelope,
  type Envelope,
  type EnvelopeJson,
  envelopeToJson,
  type HeaderJson,
  type PrekeyHeader,
  type PrekeyHeaderJson,
  type PublicIdentityJson,
  publicIdentityToJson,
} from './wire.js';
export {
  fingerprint,
  fingerprintDigits,
  type FingerprintKeys,
  matchesQr,
  QR_LENGTH,
  type SafetyNumber,
  safetyNumber,
} from './safetyNumber.js';
