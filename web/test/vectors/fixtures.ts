/**
 * Turning vector data into protocol values: key pairs from their JWKs (checked against the hex
 * forms), whole parties (identity, signed prekey, one-time prekey), records, and key sources
 * that replay a vector's keys in order.
 */

import { fromHex, toBase64Url, toHex } from '../../src/protocol/bytes.js';
import { identityFromParts, type IdentityKeyPair } from '../../src/protocol/identity.js';
import {
  type DhKeyPair,
  importDhKeyPairJwk,
  importSigningKeyPairJwk,
  type KeySource,
} from '../../src/protocol/keys.js';
import {
  type OneTimePrekey,
  type PrekeyLookup,
  restoreSignedPrekey,
  type SignedPrekey,
} from '../../src/protocol/prekeys.js';
import type { MessageDigest, PlaintextRecord, RecordBody } from '../../src/protocol/record.js';
import { parseUserId, type UserId } from '../../src/protocol/userId.js';
import { assert, assertBytes, assertEqual } from '../support/assert.js';
import type { KeyVector, PartyVector, RecordVector } from './types.js';

/** Checks a key vector's encodings agree with each other (hex, base64url, JWK). */
export function checkKeyEncodings(key: KeyVector, what: string): void {
  assertEqual(toBase64Url(fromHex(key.public)), key.publicB64, `${what}: publicB64`);
  assertEqual(toHex(fromHex(key.public).subarray(1, 33)), toHex(base64UrlBytes(key.jwk.x)), `${what}: jwk.x`);
  assertEqual(toHex(fromHex(key.public).subarray(33)), toHex(base64UrlBytes(key.jwk.y)), `${what}: jwk.y`);
  assertEqual(toHex(base64UrlBytes(key.jwk.d)), key.private, `${what}: jwk.d`);
}

function base64UrlBytes(text: string): Uint8Array {
  // Vectors are trusted input here; the strict decoder is exercised elsewhere.
  return Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
}

/** An ECDH key pair from a key vector, non-extractable, its public key checked. */
export async function dhKeyPair(key: KeyVector, what: string): Promise<DhKeyPair> {
  checkKeyEncodings(key, what);
  const pair = await importDhKeyPairJwk(key.jwk);
  assertBytes(pair.publicKey, key.public, `${what}: public key`);
  return pair;
}

/** A party of x3dh.json or ratchet.json, imported. */
export interface Party {
  readonly userId: UserId;
  readonly identity: IdentityKeyPair;
  readonly signedPrekey: SignedPrekey;
  readonly oneTimePrekey: OneTimePrekey;
  /** Finds the party's prekeys by id, like the Rust generator's `PrekeyLookup for Party`. */
  readonly prekeys: PrekeyLookup;
}

/** Imports a party: both identity keys (binding signature verified) and its prekeys. */
export async function importParty(party: PartyVector, what: string): Promise<Party> {
  const userId = parseUserId(party.userId);
  assertEqual(userId, party.userId, `${what}: user id is normalised`);
  checkKeyEncodings(party.identity.signing, `${what}: IKs`);
  const signing = await importSigningKeyPairJwk(party.identity.signing.jwk);
  assertBytes(signing.publicKey, party.identity.signing.public, `${what}: IKs public`);
  const dh = await dhKeyPair(party.identity.dh, `${what}: IKd`);
  const identity = await identityFromParts(signing, dh, fromHex(party.identity.bindingSignature));
  const spk = party.signedPrekey;
  const signedPrekey = await restoreSignedPrekey(
    identity.publicIdentity,
    spk.id,
    spk.createdAt,
    await dhKeyPair(spk.key, `${what}: SPK`),
    fromHex(spk.signature),
  );
  const oneTimePrekey: OneTimePrekey = {
    id: party.oneTimePrekey.id,
    keyPair: await dhKeyPair(party.oneTimePrekey.key, `${what}: OPK`),
  };
  const prekeys: PrekeyLookup = {
    signedPrekey: (id) => (id === signedPrekey.id ? signedPrekey : null),
    oneTimePrekey: (id) => (id === oneTimePrekey.id ? oneTimePrekey : null),
  };
  return { userId, identity, signedPrekey, oneTimePrekey, prekeys };
}

/** A key source that hands out the given key pairs in order and fails when they run out. */
export function replayKeys(keys: readonly DhKeyPair[], what: string): { source: KeySource; remaining: () => number } {
  let next = 0;
  return {
    source: () => {
      const key = keys[next];
      assert(key !== undefined, `${what}: asked for more keys than the vector lists (${keys.length})`);
      next += 1;
      return Promise.resolve(key);
    },
    remaining: () => keys.length - next,
  };
}

/** A record from its vector form. */
export function recordFromVector(vector: RecordVector): PlaintextRecord {
  let body: RecordBody;
  switch (vector.kind) {
    case 'text':
      body = { kind: 'text', text: vector.text ?? '' };
      break;
    case 'receipt':
      body = {
        kind: 'receipt',
        receipt: { type: vector.receipt?.type ?? 'delivered', counters: (vector.receipt?.counters ?? []).map(BigInt) },
      };
      break;
    case 'unsupported':
      body = { kind: 'unsupported', kindByte: vector.kindByte ?? 0 };
      break;
  }
  return {
    sentAt: BigInt(vector.sentAt),
    counter: BigInt(vector.counter),
    lastReceivedCounter: BigInt(vector.lastReceivedCounter),
    lastReceivedDigest: fromHex(vector.lastReceivedDigest) as MessageDigest,
    body,
  };
}

/** Fails unless a decoded record equals its vector form, field by field. */
export function assertRecord(actual: PlaintextRecord, expected: RecordVector, what: string): void {
  assertEqual(actual.sentAt, BigInt(expected.sentAt), `${what}: sentAt`);
  assertEqual(actual.counter, BigInt(expected.counter), `${what}: counter`);
  assertEqual(actual.lastReceivedCounter, BigInt(expected.lastReceivedCounter), `${what}: lastReceivedCounter`);
  assertBytes(actual.lastReceivedDigest, expected.lastReceivedDigest, `${what}: lastReceivedDigest`);
  assertEqual(actual.body.kind, expected.kind, `${what}: kind`);
  const body = actual.body;
  if (body.kind === 'text') assertEqual(body.text, expected.text, `${what}: text`);
  if (body.kind === 'unsupported') assertEqual(body.kindByte, expected.kindByte, `${what}: kind byte`);
  if (body.kind === 'receipt') {
    assertEqual(body.receipt.type, expected.receipt?.type, `${what}: receipt type`);
    assertEqual(
      body.receipt.counters.join(','),
      (expected.receipt?.counters ?? []).join(','),
      `${what}: receipt counters`,
    );
  }
}
