/**
 * The Double Ratchet (PROTOCOL.md §6), per https://signal.org/docs/specifications/doubleratchet/ §3.
 *
 *     encrypt: CKs, MK = KDF_CK(CKs); header = (DHs, PN, Ns); Ns += 1
 *              ciphertext = AES-256-GCM(MK, pad(record), AD ‖ header)
 *     decrypt: a stored skipped key, or: on a new remote ratchet key skip the old chain to PN and
 *              step the DH ratchet; skip to N; CKr, MK = KDF_CK(CKr); Nr += 1; open
 *     DH step: PN = Ns; Ns = Nr = 0; DHr = header.dh; RK, CKr = KDF_RK(RK, DH(DHs, DHr));
 *              DHs = GENERATE_DH(); RK, CKs = KDF_RK(RK, DH(DHs, DHr))
 *
 * The state is plain, immutable data (`Uint8Array`s, numbers, `CryptoKey`s), so it can be put
 * in IndexedDB as is. Every operation takes a state and returns a new one without touching the
 * input: a decryption that fails leaves nothing changed, because the new state only exists once
 * the AEAD tag has verified and the record has decoded, and the caller keeps the old one.
 *
 * Bounds (§6.4): at most {@link MAX_SKIP} keys skipped per header, at most
 * {@link MAX_SKIPPED_KEYS} stored per session (oldest evicted), and the remote ratchet keys of
 * the last {@link REMEMBERED_CHAINS} ended receiving chains remembered, so a replay from one of
 * them is a `DuplicateMessage` rather than a forgery.
 */

import { open as aeadOpen, seal as aeadSeal } from './aead.js';
import { type Bytes, MAX_U32, wipe } from './bytes.js';
import { isProtocolError, ProtocolError } from './errors.js';
import { type Header, messageAssociatedData } from './header.js';
import { type ChainKey, expandMessageKey, kdfCk, kdfRk, type MessageKey, type RootKey } from './kdf.js';
import { type DhKeyPair, type DhPublicKey, diffieHellman, type KeySource, samePublicKey, type SharedSecret } from './keys.js';
import {
  decodeRecord,
  encodeRecord,
  type MessageDigest,
  padRecord,
  type PlaintextRecord,
  recordDigest,
  unpadRecord,
} from './record.js';

/** Most message keys one header may make the receiver skip in one chain. */
export const MAX_SKIP = 1000;
/** Most skipped keys a session stores; beyond it the oldest are evicted. */
export const MAX_SKIPPED_KEYS = 2000;
/** How many ended receiving chains are remembered to recognise duplicates from them. */
export const REMEMBERED_CHAINS = 32;

/** The key of a message not yet received, stored when a header skipped past it. */
export interface SkippedKey {
  /** The remote ratchet key of the chain the message belongs to. */
  readonly ratchetKey: DhPublicKey;
  /** The message's number in that chain. */
  readonly n: number;
  /** Its message key. */
  readonly messageKey: MessageKey;
}

/** The state of one Double Ratchet session. Immutable: operations return a new state. */
export interface RatchetState {
  /** `DHs`: our current ratchet key pair. */
  readonly selfKey: DhKeyPair;
  /** `DHr`: the peer's current ratchet key (`null` before the responder's first message). */
  readonly remoteKey: DhPublicKey | null;
  /** `RK`. */
  readonly rootKey: RootKey;
  /** `CKs` (`null` for a responder before its first DH step). */
  readonly sendingChain: ChainKey | null;
  /** `CKr` (`null` for an initiator before the first reply). */
  readonly receivingChain: ChainKey | null;
  /** `Ns`. */
  readonly ns: number;
  /** `Nr`. */
  readonly nr: number;
  /** `PN`. */
  readonly pn: number;
  /** `MKSKIPPED`, oldest first, at most {@link MAX_SKIPPED_KEYS}. */
  readonly skipped: readonly SkippedKey[];
  /** Remote ratchet keys of ended receiving chains, oldest first, at most {@link REMEMBERED_CHAINS}. */
  readonly previousRemoteKeys: readonly DhPublicKey[];
}

/** What a successful encryption produced. */
export interface Sealed {
  /** The state to keep. */
  readonly state: RatchetState;
  /** The header to send. */
  readonly header: Header;
  /** `ciphertext ‖ tag`. */
  readonly ciphertext: Bytes;
  /** The digest of the record sent, to match the peer's acknowledgement (§7.3). */
  readonly digest: MessageDigest;
}

/** What a successful decryption produced. */
export interface Opened {
  /** The state to keep. */
  readonly state: RatchetState;
  /** The record. */
  readonly record: PlaintextRecord;
  /** Its digest. */
  readonly digest: MessageDigest;
}

type Draft<T> = { -readonly [K in keyof T]: T[K] };

/**
 * The initiator's state after X3DH (§6.3): `ratchetKey` is a fresh key pair, `remote` the
 * responder's signed prekey. `NonContributoryKey` if their DH is all zero.
 */
export async function initiatorState(sharedSecret: RootKey, remote: DhPublicKey, ratchetKey: DhKeyPair): Promise<RatchetState> {
  const dh = await diffieHellman(ratchetKey.privateKey, remote);
  const { rootKey, chainKey } = await kdfRk(sharedSecret, dh);
  wipe(dh);
  return {
    selfKey: ratchetKey,
    remoteKey: remote,
    rootKey,
    sendingChain: chainKey,
    receivingChain: null,
    ns: 0,
    nr: 0,
    pn: 0,
    skipped: [],
    previousRemoteKeys: [],
  };
}

/** The responder's state after X3DH: its signed prekey is its first ratchet key. */
export function responderState(sharedSecret: RootKey, signedPrekey: DhKeyPair): RatchetState {
  return {
    selfKey: signedPrekey,
    remoteKey: null,
    rootKey: sharedSecret,
    sendingChain: null,
    receivingChain: null,
    ns: 0,
    nr: 0,
    pn: 0,
    skipped: [],
    previousRemoteKeys: [],
  };
}

/** Whether this state can send (a responder cannot before its first decryption). */
export function canSend(state: RatchetState): boolean {
  return state.sendingChain !== null;
}

/**
 * Encrypts a record. `NoSendingChain` for a responder that has not received yet,
 * `ChainExhausted` after 2^32 messages in one chain, and the record's own errors
 * (`RecordTooLarge`, `InvalidText`, …).
 */
export async function ratchetEncrypt(
  state: RatchetState,
  record: PlaintextRecord,
  associatedData: Bytes,
): Promise<Sealed> {
  if (state.sendingChain === null) throw new ProtocolError('NoSendingChain', 'no sending chain yet');
  if (state.ns >= MAX_U32) throw new ProtocolError('ChainExhausted', 'sending chain exhausted');
  const encoded = encodeRecord(record);
  const padded = padRecord(encoded);
  try {
    const { messageKey, chainKey } = await kdfCk(state.sendingChain);
    const header: Header = { dh: state.selfKey.publicKey, pn: state.pn, n: state.ns };
    const material = await expandMessageKey(messageKey);
    const ciphertext = await aeadSeal(material, padded, messageAssociatedData(associatedData, header));
    wipe(messageKey, material.key, material.nonce);
    return {
      state: { ...state, sendingChain: chainKey, ns: state.ns + 1 },
      header,
      ciphertext,
      digest: await recordDigest(encoded),
    };
  } finally {
    wipe(encoded, padded);
  }
}

/**
 * Decrypts a message. Errors: `DuplicateMessage` (its key was used or discarded),
 * `TooManySkipped`, `DecryptionFailed` (the tag does not verify, a DH step is
 * non-contributory, or the plaintext is not a valid record: deliberately one code). On any error
 * the input state is untouched and no new state exists.
 *
 * `keys` supplies the fresh ratchet key of a DH step.
 */
export async function ratchetDecrypt(
  state: RatchetState,
  header: Header,
  ciphertext: Bytes,
  associatedData: Bytes,
  keys: KeySource,
): Promise<Opened> {
  const skippedIndex = state.skipped.findIndex((k) => k.n === header.n && samePublicKey(k.ratchetKey, header.dh));
  if (skippedIndex >= 0) {
    const skipped = state.skipped[skippedIndex] as SkippedKey;
    const opened = await openRecord(skipped.messageKey, ciphertext, associatedData, header);
    return { ...opened, state: { ...state, skipped: state.skipped.filter((_, i) => i !== skippedIndex) } };
  }

  const sameChain = state.remoteKey !== null && samePublicKey(state.remoteKey, header.dh);
  if ((sameChain && header.n < state.nr) || state.previousRemoteKeys.some((k) => samePublicKey(k, header.dh))) {
    throw new ProtocolError('DuplicateMessage', 'message key already used');
  }

  // Fast path: the next message of the current receiving chain needs only a chain step.
  if (sameChain && header.n === state.nr && state.receivingChain !== null) {
    if (state.nr >= MAX_U32) throw new ProtocolError('TooManySkipped', 'receiving chain exhausted');
    const { messageKey, chainKey } = await kdfCk(state.receivingChain);
    const opened = await openRecord(messageKey, ciphertext, associatedData, header);
    wipe(messageKey);
    return { ...opened, state: { ...state, receivingChain: chainKey, nr: state.nr + 1 } };
  }

  const next: Draft<RatchetState> = { ...state, skipped: [...state.skipped], previousRemoteKeys: [...state.previousRemoteKeys] };
  if (!sameChain) {
    await skipMessageKeys(next, header.pn);
    await dhRatchet(next, header, keys);
  }
  await skipMessageKeys(next, header.n);
  if (next.receivingChain === null) throw new ProtocolError('DecryptionFailed', 'no receiving chain');
  if (next.nr >= MAX_U32) throw new ProtocolError('TooManySkipped', 'receiving chain exhausted');
  const { messageKey, chainKey } = await kdfCk(next.receivingChain);
  next.receivingChain = chainKey;
  next.nr += 1;
  const opened = await openRecord(messageKey, ciphertext, associatedData, header);
  wipe(messageKey);
  return { ...opened, state: next };
}

/**
 * `SkipMessageKeys(state, until)`: stores the keys of the current receiving chain up to `until`,
 * refusing to skip more than {@link MAX_SKIP}. Mutates the draft.
 */
async function skipMessageKeys(state: Draft<RatchetState>, until: number): Promise<void> {
  if (until <= state.nr) return;
  if (until - state.nr > MAX_SKIP) throw new ProtocolError('TooManySkipped', 'too many skipped messages');
  const remote = state.remoteKey;
  let chain = state.receivingChain;
  // No receiving chain yet (an initiator before the first reply): nothing to skip.
  if (remote === null || chain === null) return;
  const skipped = state.skipped as SkippedKey[];
  while (state.nr < until) {
    const step = await kdfCk(chain);
    skipped.push({ ratchetKey: remote, n: state.nr, messageKey: step.messageKey });
    if (skipped.length > MAX_SKIPPED_KEYS) skipped.shift();
    chain = step.chainKey;
    state.nr += 1;
  }
  state.receivingChain = chain;
}

/** `DHRatchet(state, header)`. Mutates the draft. */
async function dhRatchet(state: Draft<RatchetState>, header: Header, keys: KeySource): Promise<void> {
  if (state.remoteKey !== null) {
    const previous = state.previousRemoteKeys as DhPublicKey[];
    previous.push(state.remoteKey);
    if (previous.length > REMEMBERED_CHAINS) previous.shift();
  }
  state.remoteKey = header.dh;
  state.pn = state.ns;
  state.ns = 0;
  state.nr = 0;
  const receivingDh = await dhOrFail(state.selfKey, header.dh);
  const receiving = await kdfRk(state.rootKey, receivingDh);
  wipe(receivingDh);
  const ratchetKey = await keys();
  const sendingDh = await dhOrFail(ratchetKey, header.dh);
  const sending = await kdfRk(receiving.rootKey, sendingDh);
  wipe(sendingDh, receiving.rootKey);
  state.rootKey = sending.rootKey;
  state.receivingChain = receiving.chainKey;
  state.sendingChain = sending.chainKey;
  state.selfKey = ratchetKey;
}

/** A DH step whose output is all zero cannot be told apart from a forgery: `DecryptionFailed`. */
async function dhOrFail(ours: DhKeyPair, theirs: DhPublicKey): Promise<SharedSecret> {
  try {
    return await diffieHellman(ours.privateKey, theirs);
  } catch (error) {
    if (isProtocolError(error, 'NonContributoryKey')) throw new ProtocolError('DecryptionFailed', 'invalid ratchet key');
    throw error;
  }
}

/** Opens, unpads and decodes; any failure is `DecryptionFailed`. */
async function openRecord(
  messageKey: MessageKey,
  ciphertext: Bytes,
  associatedData: Bytes,
  header: Header,
): Promise<{ record: PlaintextRecord; digest: MessageDigest }> {
  const material = await expandMessageKey(messageKey);
  let padded: Bytes | null = null;
  let encoded: Bytes | null = null;
  try {
    padded = await aeadOpen(material, ciphertext, messageAssociatedData(associatedData, header));
    encoded = unpadRecord(padded);
    const record = decodeRecord(encoded);
    return { record, digest: await recordDigest(encoded) };
  } catch (error) {
    // A bad tag and a bad record mean the same to the caller, and are deliberately
    // indistinguishable to anyone it might tell.
    if (isProtocolError(error)) throw new ProtocolError('DecryptionFailed', 'decryption failed');
    throw error;
  } finally {
    wipe(material.key, material.nonce, padded, encoded);
  }
}
