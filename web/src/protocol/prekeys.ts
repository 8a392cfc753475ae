/**
 * Signed and one-time prekeys, and the bundle a relay hands out (PROTOCOL.md §4, §4.2, §8.2).
 *
 * A signed prekey's signature covers id, creation time and key, so a relay can neither swap the
 * key nor pass an old prekey off as new. A {@link PrekeyBundle} exists only verified: its
 * identity binding and its signed-prekey signature have both checked out.
 */

import { type Bytes, copyBytes, MAX_SAFE_INTEGER, MAX_U32 } from './bytes.js';
import { ProtocolError } from './errors.js';
import type { IdentityKeyPair, PublicIdentity } from './identity.js';
import { type DhKeyPair, type DhPublicKey, generateDhKeyPair, type KeySource, sign, verify } from './keys.js';
import { signedPrekeyMessage } from './signing.js';
import type { UserId } from './userId.js';

/** The published part of a signed prekey. */
export interface SignedPrekeyPublic {
  /** Chosen by the owner (`u32`); names the prekey in prekey messages. */
  readonly id: number;
  /** Creation time, Unix seconds; signed so a relay cannot pass an old key off as new. */
  readonly createdAt: number;
  /** The public key. */
  readonly key: DhPublicKey;
  /** `IKs`'s signature over id, time and key (§4.1). */
  readonly signature: Bytes;
}

/** A signed prekey with its private key, kept by its owner (for 30 days after rotation). */
export interface SignedPrekey {
  /** Chosen by the owner (`u32`). */
  readonly id: number;
  /** Creation time, Unix seconds. */
  readonly createdAt: number;
  /** The key pair; the private key is non-extractable. */
  readonly keyPair: DhKeyPair;
  /** `IKs`'s signature, stored because Web Crypto's ECDSA is not deterministic. */
  readonly signature: Bytes;
}

/** The published part of a one-time prekey. */
export interface OneTimePrekeyPublic {
  /** Names the prekey in prekey messages (`u32`). */
  readonly id: number;
  /** The public key. */
  readonly key: DhPublicKey;
}

/** A one-time prekey with its private key, kept until a prekey message that used it is saved. */
export interface OneTimePrekey {
  /** Names the prekey in prekey messages (`u32`). */
  readonly id: number;
  /** The key pair; the private key is non-extractable. */
  readonly keyPair: DhKeyPair;
}

/** What the relay hands out for a user: everything an initiator needs for X3DH. Verified. */
export interface PrekeyBundle {
  /** Whose bundle this is. */
  readonly userId: UserId;
  /** Their identity, binding verified. */
  readonly identity: PublicIdentity;
  /** Their current signed prekey, signature verified. */
  readonly signedPrekey: SignedPrekeyPublic;
  /** One of their one-time prekeys, or `null` when none were left. */
  readonly oneTimePrekey: OneTimePrekeyPublic | null;
}

/** Where a responder finds the prekeys a prekey message names (e.g. an IndexedDB store). */
export interface PrekeyLookup {
  /** The signed prekey with this id, if still kept. */
  signedPrekey(id: number): Promise<SignedPrekey | null> | SignedPrekey | null;
  /** The one-time prekey with this id, if not yet used. */
  oneTimePrekey(id: number): Promise<OneTimePrekey | null> | OneTimePrekey | null;
}

function checkU32(id: number, what: string): void {
  if (!Number.isInteger(id) || id < 0 || id > MAX_U32) throw new ProtocolError('OutOfRange', `${what} is a u32`);
}

function checkTime(createdAt: number): void {
  if (!Number.isSafeInteger(createdAt) || createdAt < 0 || createdAt > MAX_SAFE_INTEGER) {
    throw new ProtocolError('OutOfRange', 'a creation time is an integer from 0 to 2^53 - 1');
  }
}

/** Signs a key pair as signed prekey `id`, created at `createdAt` (Unix seconds). */
export async function signPrekey(
  identity: IdentityKeyPair,
  id: number,
  createdAt: number,
  keyPair: DhKeyPair,
): Promise<SignedPrekey> {
  checkU32(id, 'a signed prekey id');
  checkTime(createdAt);
  const message = signedPrekeyMessage(identity.signing.publicKey, id, createdAt, keyPair.publicKey);
  return { id, createdAt, keyPair, signature: await sign(identity.signing.privateKey, message) };
}

/** Generates and signs a fresh signed prekey. */
export async function generateSignedPrekey(
  identity: IdentityKeyPair,
  id: number,
  createdAt: number,
  keys: KeySource = generateDhKeyPair,
): Promise<SignedPrekey> {
  return signPrekey(identity, id, createdAt, await keys());
}

/**
 * Rebuilds a signed prekey from a key pair and a signature made earlier (storage, test
 * vectors), verifying the signature against the owner's identity.
 */
export async function restoreSignedPrekey(
  owner: PublicIdentity,
  id: number,
  createdAt: number,
  keyPair: DhKeyPair,
  signature: Uint8Array,
): Promise<SignedPrekey> {
  const prekey: SignedPrekey = { id, createdAt, keyPair, signature: copyBytes(signature) };
  await verifySignedPrekey(owner, publicSignedPrekey(prekey));
  return prekey;
}

/** What is published of a signed prekey. */
export function publicSignedPrekey(prekey: SignedPrekey): SignedPrekeyPublic {
  return { id: prekey.id, createdAt: prekey.createdAt, key: prekey.keyPair.publicKey, signature: prekey.signature };
}

/** Verifies a signed prekey's signature with its owner's identity (`InvalidSignature`). */
export async function verifySignedPrekey(owner: PublicIdentity, prekey: SignedPrekeyPublic): Promise<void> {
  checkU32(prekey.id, 'a signed prekey id');
  checkTime(prekey.createdAt);
  await verify(owner.signing, signedPrekeyMessage(owner.signing, prekey.id, prekey.createdAt, prekey.key), prekey.signature);
}

/** Generates one-time prekey `id`. */
export async function generateOneTimePrekey(id: number, keys: KeySource = generateDhKeyPair): Promise<OneTimePrekey> {
  checkU32(id, 'a one-time prekey id');
  return { id, keyPair: await keys() };
}

/** What is published of a one-time prekey. */
export function publicOneTimePrekey(prekey: OneTimePrekey): OneTimePrekeyPublic {
  return { id: prekey.id, key: prekey.keyPair.publicKey };
}

/**
 * Builds a bundle, verifying the signed prekey against the identity (the identity itself was
 * verified when it was built).
 */
export async function createBundle(
  userId: UserId,
  identity: PublicIdentity,
  signedPrekey: SignedPrekeyPublic,
  oneTimePrekey: OneTimePrekeyPublic | null,
): Promise<PrekeyBundle> {
  await verifySignedPrekey(identity, signedPrekey);
  if (oneTimePrekey !== null) checkU32(oneTimePrekey.id, 'a one-time prekey id');
  return { userId, identity, signedPrekey, oneTimePrekey };
}
