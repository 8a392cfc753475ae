/**
 * JSON wire types (PROTOCOL.md §8): strict decoders and byte-exact encoders.
 *
 * Decoding has two stages, in the Rust core's order, so both implementations report the same
 * error code for the same input:
 *
 * 1. shape: the value must have exactly the fields of its type, each of the right JSON type, `u32`
 *    fields within range (anything else is `Json`, what serde reports);
 * 2. meaning: version and suite, then each field in the order the Rust `TryFrom` impls read
 *    them: base64url decoded canonically (`InvalidBase64`), lengths checked (`InvalidLength`),
 *    points validated (`InvalidPublicKey`), signatures verified (`InvalidSignature`).
 *
 * Text input goes through {@link parseStrictJson} (duplicate keys, non-integer numbers and lone
 * surrogates refused). Values that were already parsed elsewhere (a Socket.IO payload) can be
 * decoded with the `…Json` variants; `JSON.parse` has then already merged duplicate keys and
 * rounded integers beyond 2^53, which no valid Sotto value contains.
 *
 * Encoders build objects in the field order of §8, so `JSON.stringify` writes exactly the bytes
 * serde_json writes (the test vectors compare them).
 */

import { type Bytes, fromBase64Url, fromBase64UrlExact, MAX_SAFE_INTEGER, MAX_U32, MAX_U64, toBase64Url } from './bytes.js';
import { isProtocolError, ProtocolError } from './errors.js';
import type { Header } from './header.js';
import { type PublicIdentity, verifyPublicIdentity } from './identity.js';
import { parseStrictJson } from './json.js';
import {
  decodeDhPublicKey,
  decodeSigningPublicKey,
  type DhPublicKey,
  PUBLIC_KEY_LENGTH,
  SIGNATURE_LENGTH,
  type SigningPublicKey,
} from './keys.js';
import {
  type OneTimePrekeyPublic,
  type PrekeyBundle,
  type SignedPrekeyPublic,
  verifySignedPrekey,
} from './prekeys.js';
import { isBucket, MAX_BUCKET } from './record.js';
import { TAG_LENGTH } from './aead.js';
import { parseUserId } from './userId.js';
import { PROTOCOL_VERSION, SUITE } from './version.js';

/** Longest valid ciphertext: the largest bucket plus the tag. */
export const MAX_CIPHERTEXT_LENGTH = MAX_BUCKET + TAG_LENGTH;
/** Longest base64url text a valid ciphertext can have; longer texts are refused undecoded. */
const MAX_CIPHERTEXT_TEXT_LENGTH = Math.ceil(MAX_CIPHERTEXT_LENGTH / 3) * 4;

// ---- typed values -----------------------------------------------------------------------------

/** What a prekey message adds to the header (§8.4). */
export interface PrekeyHeader {
  /** The sender's identity, binding verified. */
  readonly identity: PublicIdentity;
  /** `EK_A`: names the session. */
  readonly baseKey: DhPublicKey;
  /** Which of the recipient's signed prekeys was used. */
  readonly signedPrekeyId: number;
  /** Which one-time prekey was used, or `null`. */
  readonly oneTimePrekeyId: number | null;
}

/** An encrypted message (§8.5). */
export interface Envelope {
  /** The ratchet header. */
  readonly header: Header;
  /** Present on prekey messages, `null` otherwise. */
  readonly prekey: PrekeyHeader | null;
  /** `ciphertext ‖ tag`: a bucket size plus 16 bytes. */
  readonly ciphertext: Bytes;
}

// ---- JSON forms, field order as in §8 ---------------------------------------------------------

/** §8.1 */
export interface PublicIdentityJson {
  readonly signing: string;
  readonly dh: string;
  readonly signature: string;
}

/** §8.2 `signedPrekey` */
export interface SignedPrekeyJson {
  readonly id: number;
  readonly key: string;
  readonly createdAt: number;
  readonly signature: string;
}

/** §8.2 `oneTimePrekey` */
export interface OneTimePrekeyJson {
  readonly id: number;
  readonly key: string;
}

/** §8.2 */
export interface BundleJson {
  readonly version: number;
  readonly suite: number;
  readonly userId: string;
  readonly identity: PublicIdentityJson;
  readonly signedPrekey: SignedPrekeyJson;
  readonly oneTimePrekey?: OneTimePrekeyJson;
}

/** §8.3 */
export interface HeaderJson {
  readonly dh: string;
  readonly pn: number;
  readonly n: number;
}

/** §8.4 */
export interface PrekeyHeaderJson {
  readonly identity: PublicIdentityJson;
  readonly baseKey: string;
  readonly signedPrekeyId: number;
  readonly oneTimePrekeyId?: number;
}

/** §8.5 */
export interface EnvelopeJson {
  readonly version: number;
  readonly suite: number;
  readonly header: HeaderJson;
  readonly prekey?: PrekeyHeaderJson;
  readonly ciphertext: string;
}

// ---- encoders ---------------------------------------------------------------------------------

/** §8.1 as an object. */
export function publicIdentityToJson(identity: PublicIdentity): PublicIdentityJson {
  return {
    signing: toBase64Url(identity.signing),
    dh: toBase64Url(identity.dh),
    signature: toBase64Url(identity.signature),
  };
}

/** §8.2 as an object, fields in wire order. */
export function bundleToJson(bundle: PrekeyBundle): BundleJson {
  const { signedPrekey, oneTimePrekey } = bundle;
  return {
    version: PROTOCOL_VERSION,
    suite: SUITE,
    userId: bundle.userId,
    identity: publicIdentityToJson(bundle.identity),
    signedPrekey: {
      id: signedPrekey.id,
      key: toBase64Url(signedPrekey.key),
      createdAt: signedPrekey.createdAt,
      signature: toBase64Url(signedPrekey.signature),
    },
    ...(oneTimePrekey === null ? {} : { oneTimePrekey: { id: oneTimePrekey.id, key: toBase64Url(oneTimePrekey.key) } }),
  };
}

/** §8.2 as text, byte-identical to the Rust core's. */
export function encodeBundle(bundle: PrekeyBundle): string {
  return JSON.stringify(bundleToJson(bundle));
}

/** §8.3 as an object. */
export function headerToJson(header: Header): HeaderJson {
  return { dh: toBase64Url(header.dh), pn: header.pn, n: header.n };
}

/** §8.5 as an object, fields in wire order. */
export function envelopeToJson(envelope: Envelope): EnvelopeJson {
  const { prekey } = envelope;
  return {
    version: PROTOCOL_VERSION,
    suite: SUITE,
    header: headerToJson(envelope.header),
    ...(prekey === null
      ? {}
      : {
          prekey: {
            identity: publicIdentityToJson(prekey.identity),
            baseKey: toBase64Url(prekey.baseKey),
            signedPrekeyId: prekey.signedPrekeyId,
            ...(prekey.oneTimePrekeyId === null ? {} : { oneTimePrekeyId: prekey.oneTimePrekeyId }),
          },
        }),
    ciphertext: toBase64Url(envelope.ciphertext),
  };
}

/** §8.5 as text, byte-identical to the Rust core's. */
export function encodeEnvelope(envelope: Envelope): string {
  return JSON.stringify(envelopeToJson(envelope));
}

// ---- stage 1: shape ---------------------------------------------------------------------------

type Fields = { readonly [key: string]: unknown };

function shapeError(path: string, reason: string): never {
  throw new ProtocolError('Json', reason, path);
}

/** An object with exactly these fields (optional ones may be absent or `null`, as serde allows). */
function object(value: unknown, path: string, required: readonly string[], optional: readonly string[] = []): Fields {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || ArrayBuffer.isView(value)) {
    shapeError(path, 'expected an object');
  }
  const fields = value as Fields;
  for (const key of Object.keys(fields)) {
    if (!required.includes(key) && !optional.includes(key)) shapeError(path, `unknown field "${key}"`);
  }
  for (const key of required) {
    if (!Object.prototype.hasOwnProperty.call(fields, key) || fields[key] === undefined) {
      shapeError(path, `missing field "${key}"`);
    }
  }
  return fields;
}

function present(fields: Fields, key: string): boolean {
  const value = fields[key];
  return value !== undefined && value !== null;
}

function string(fields: Fields, key: string, path: string): string {
  const value = fields[key];
  if (typeof value !== 'string') shapeError(`${path}${key}`, 'expected a string');
  return value;
}

/** An unsigned integer, from the strict parser (bigint) or from `JSON.parse` (number). */
function unsigned(fields: Fields, key: string, path: string, max: bigint): bigint {
  const value = fields[key];
  let integer: bigint;
  if (typeof value === 'bigint') {
    integer = value;
  } else if (typeof value === 'number' && Number.isInteger(value) && !Object.is(value, -0)) {
    integer = BigInt(value);
  } else {
    return shapeError(`${path}${key}`, 'expected an unsigned integer');
  }
  if (integer < 0n || integer > max) shapeError(`${path}${key}`, 'integer out of range');
  return integer;
}

function u32(fields: Fields, key: string, path: string): number {
  return Number(unsigned(fields, key, path, BigInt(MAX_U32)));
}

function u64(fields: Fields, key: string, path: string): bigint {
  return unsigned(fields, key, path, MAX_U64);
}

interface RawIdentity {
  readonly signing: string;
  readonly dh: string;
  readonly signature: string;
}

function shapeIdentity(value: unknown, path: string): RawIdentity {
  const fields = object(value, path, ['signing', 'dh', 'signature']);
  return {
    signing: string(fields, 'signing', `${path}.`),
    dh: string(fields, 'dh', `${path}.`),
    signature: string(fields, 'signature', `${path}.`),
  };
}

interface RawBundle {
  readonly version: bigint;
  readonly suite: bigint;
  readonly userId: string;
  readonly identity: RawIdentity;
  readonly signedPrekey: { readonly id: number; readonly key: string; readonly createdAt: bigint; readonly signature: string };
  readonly oneTimePrekey: { readonly id: number; readonly key: string } | null;
}

function shapeBundle(value: unknown): RawBundle {
  const fields = object(value, '', ['version', 'suite', 'userId', 'identity', 'signedPrekey'], ['oneTimePrekey']);
  const spk = object(fields['signedPrekey'], 'signedPrekey', ['id', 'key', 'createdAt', 'signature']);
  let oneTimePrekey: RawBundle['oneTimePrekey'] = null;
  if (present(fields, 'oneTimePrekey')) {
    const opk = object(fields['oneTimePrekey'], 'oneTimePrekey', ['id', 'key']);
    oneTimePrekey = { id: u32(opk, 'id', 'oneTimePrekey.'), key: string(opk, 'key', 'oneTimePrekey.') };
  }
  return {
    version: u64(fields, 'version', ''),
    suite: u64(fields, 'suite', ''),
    userId: string(fields, 'userId', ''),
    identity: shapeIdentity(fields['identity'], 'identity'),
    signedPrekey: {
      id: u32(spk, 'id', 'signedPrekey.'),
      key: string(spk, 'key', 'signedPrekey.'),
      createdAt: u64(spk, 'createdAt', 'signedPrekey.'),
      signature: string(spk, 'signature', 'signedPrekey.'),
    },
    oneTimePrekey,
  };
}

interface RawEnvelope {
  readonly version: bigint;
  readonly suite: bigint;
  readonly header: { readonly dh: string; readonly pn: number; readonly n: number };
  readonly prekey: {
    readonly identity: RawIdentity;
    readonly baseKey: string;
    readonly signedPrekeyId: number;
    readonly oneTimePrekeyId: number | null;
  } | null;
  readonly ciphertext: string;
}

function shapeEnvelope(value: unknown): RawEnvelope {
  const fields = object(value, '', ['version', 'suite', 'header', 'ciphertext'], ['prekey']);
  const header = object(fields['header'], 'header', ['dh', 'pn', 'n']);
  let prekey: RawEnvelope['prekey'] = null;
  if (present(fields, 'prekey')) {
    const raw = object(fields['prekey'], 'prekey', ['identity', 'baseKey', 'signedPrekeyId'], ['oneTimePrekeyId']);
    prekey = {
      identity: shapeIdentity(raw['identity'], 'prekey.identity'),
      baseKey: string(raw, 'baseKey', 'prekey.'),
      signedPrekeyId: u32(raw, 'signedPrekeyId', 'prekey.'),
      oneTimePrekeyId: present(raw, 'oneTimePrekeyId') ? u32(raw, 'oneTimePrekeyId', 'prekey.') : null,
    };
  }
  return {
    version: u64(fields, 'version', ''),
    suite: u64(fields, 'suite', ''),
    header: {
      dh: string(header, 'dh', 'header.'),
      pn: u32(header, 'pn', 'header.'),
      n: u32(header, 'n', 'header.'),
    },
    prekey,
    ciphertext: string(fields, 'ciphertext', ''),
  };
}

// ---- stage 2: meaning -------------------------------------------------------------------------

function checkVersionAndSuite(version: bigint, suite: bigint): void {
  if (version !== BigInt(PROTOCOL_VERSION)) throw new ProtocolError('UnsupportedVersion', 'unsupported protocol version', 'version');
  if (suite !== BigInt(SUITE)) throw new ProtocolError('UnsupportedSuite', 'unsupported cipher suite', 'suite');
}

/** Runs a check and names the field in whatever protocol error it throws. */
async function inField<T>(field: string, check: () => Promise<T>): Promise<T> {
  try {
    return await check();
  } catch (error) {
    if (isProtocolError(error) && error.field === undefined) throw new ProtocolError(error.code, error.message, field);
    throw error;
  }
}

function dhKey(text: string, field: string): Promise<DhPublicKey> {
  return inField(field, () => decodeDhPublicKey(fromBase64UrlExact(text, PUBLIC_KEY_LENGTH, field)));
}

function signingKey(text: string, field: string): Promise<SigningPublicKey> {
  return inField(field, () => decodeSigningPublicKey(fromBase64UrlExact(text, PUBLIC_KEY_LENGTH, field)));
}

function signature(text: string, field: string): Bytes {
  return fromBase64UrlExact(text, SIGNATURE_LENGTH, field);
}

async function decodeIdentity(raw: RawIdentity, path: string): Promise<PublicIdentity> {
  const signing = await signingKey(raw.signing, `${path}.signing`);
  const dh = await dhKey(raw.dh, `${path}.dh`);
  const binding = signature(raw.signature, `${path}.signature`);
  return inField(`${path}.signature`, () => verifyPublicIdentity(signing, dh, binding));
}

/**
 * The UTF-8 length of a string, which is what the Rust core measures (a JavaScript string's
 * `length` counts UTF-16 units), so both refuse the same oversized non-ASCII texts the same way.
 */
function utf8Length(text: string): number {
  let length = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) length += 1;
    else if (unit < 0x800) length += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      length += 4; // a surrogate pair is one 4-byte code point
      i++;
    } else length += 3;
  }
  return length;
}

/** Checks a ciphertext's length: a bucket size plus the GCM tag (`InvalidCiphertextLength`). */
export function checkCiphertextLength(length: number): void {
  if (length < TAG_LENGTH || !isBucket(length - TAG_LENGTH)) {
    throw new ProtocolError('InvalidCiphertextLength', `invalid ciphertext length ${length}`, 'ciphertext');
  }
}

/** Strictly decodes a bundle from an already parsed JSON value; verifies both signatures. */
export async function decodeBundleJson(value: unknown): Promise<PrekeyBundle> {
  const raw = shapeBundle(value);
  checkVersionAndSuite(raw.version, raw.suite);
  const userId = (() => {
    try {
      return parseUserId(raw.userId);
    } catch (error) {
      if (isProtocolError(error)) throw new ProtocolError(error.code, error.message, 'userId');
      throw error;
    }
  })();
  if (userId !== raw.userId) {
    // A bundle carries the normalised id; anything else was not made by a relay.
    throw new ProtocolError('InvalidUserId', 'the user id is not normalised', 'userId');
  }
  const identity = await decodeIdentity(raw.identity, 'identity');
  const spk = raw.signedPrekey;
  if (spk.createdAt > BigInt(MAX_SAFE_INTEGER)) {
    throw new ProtocolError('OutOfRange', 'a creation time is at most 2^53 - 1', 'signedPrekey.createdAt');
  }
  const signedPrekey: SignedPrekeyPublic = {
    id: spk.id,
    createdAt: Number(spk.createdAt),
    key: await dhKey(spk.key, 'signedPrekey.key'),
    signature: signature(spk.signature, 'signedPrekey.signature'),
  };
  // The signature is checked before the one-time prekey is read, as in the Rust core, so an
  // input with several faults gets the same error code from both.
  await inField('signedPrekey.signature', () => verifySignedPrekey(identity, signedPrekey));
  let oneTimePrekey: OneTimePrekeyPublic | null = null;
  if (raw.oneTimePrekey !== null) {
    oneTimePrekey = { id: raw.oneTimePrekey.id, key: await dhKey(raw.oneTimePrekey.key, 'oneTimePrekey.key') };
  }
  return { userId, identity, signedPrekey, oneTimePrekey };
}

/**
 * Strictly decodes a public identity (§8.1) from an already parsed JSON value, such as the
 * relay's `user:identity` answer; verifies its binding signature.
 */
export async function decodePublicIdentityJson(value: unknown): Promise<PublicIdentity> {
  return decodeIdentity(shapeIdentity(value, 'identity'), 'identity');
}

/** Strictly decodes a bundle from JSON text (§8.2). */
export async function decodeBundle(text: string): Promise<PrekeyBundle> {
  return decodeBundleJson(parseStrictJson(text));
}

/**
 * Strictly decodes an envelope from an already parsed JSON value; verifies the prekey header's
 * identity binding.
 */
export async function decodeEnvelopeJson(value: unknown): Promise<Envelope> {
  const raw = shapeEnvelope(value);
  checkVersionAndSuite(raw.version, raw.suite);
  // Check the length from the text before decoding, so an oversized field costs nothing.
  if (utf8Length(raw.ciphertext) > MAX_CIPHERTEXT_TEXT_LENGTH) {
    throw new ProtocolError('InvalidCiphertextLength', 'ciphertext too long', 'ciphertext');
  }
  const ciphertext = fromBase64Url(raw.ciphertext, 'ciphertext');
  checkCiphertextLength(ciphertext.length);
  const header: Header = { dh: await dhKey(raw.header.dh, 'header.dh'), pn: raw.header.pn, n: raw.header.n };
  let prekey: PrekeyHeader | null = null;
  if (raw.prekey !== null) {
    prekey = {
      identity: await decodeIdentity(raw.prekey.identity, 'prekey.identity'),
      baseKey: await dhKey(raw.prekey.baseKey, 'prekey.baseKey'),
      signedPrekeyId: raw.prekey.signedPrekeyId,
      oneTimePrekeyId: raw.prekey.oneTimePrekeyId,
    };
  }
  return { header, prekey, ciphertext };
}

/** Strictly decodes an envelope from JSON text (§8.5). */
export async function decodeEnvelope(text: string): Promise<Envelope> {
  return decodeEnvelopeJson(parseStrictJson(text));
}
