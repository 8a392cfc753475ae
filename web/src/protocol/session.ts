/**
 * Sessions with one peer (PROTOCOL.md §6.5): starting one from a bundle, answering a prekey
 * message, choosing among a peer's sessions, and the state to store.
 *
 * A {@link SessionState} is one X3DH + Double Ratchet run. A {@link SessionRecordState} holds a
 * peer's current session and up to {@link MAX_PREVIOUS_SESSIONS} earlier ones, most recent
 * first, so messages still in flight on an older session (after both sides started one at once,
 * or after the peer reinstalled) are not lost.
 *
 * Two ways to use it:
 *
 * - the transactional functions {@link sessionRecordEncrypt} and {@link sessionRecordDecrypt}
 *   take a record state and return a new one, never touching their input. A client that keeps
 *   state in IndexedDB loads the state, calls one of them, and saves the result (with the
 *   deletion of a used one-time prekey) in one transaction. IndexedDB transactions close while
 *   Web Crypto works, so the load and the save are separate transactions: the client must not
 *   run two operations for the same peer at once (a per-peer queue).
 * - the {@link SessionRecord} class wraps a state and queues its operations itself.
 *
 * Nothing changes unless a decryption succeeds, and a one-time prekey is only reported as used
 * once the message that used it has decrypted: the caller deletes it then, never before.
 */

import { type Bytes, wipe } from './bytes.js';
import { isProtocolError, ProtocolError } from './errors.js';
import type { IdentityKeyPair, PublicIdentity } from './identity.js';
import { type DhPublicKey, generateDhKeyPair, type KeySource, samePublicKey } from './keys.js';
import type { PrekeyBundle, PrekeyLookup } from './prekeys.js';
import {
  canSend,
  initiatorState,
  MAX_SKIPPED_KEYS,
  type RatchetState,
  ratchetDecrypt,
  ratchetEncrypt,
  REMEMBERED_CHAINS,
  responderState,
} from './ratchet.js';
import type { MessageDigest, PlaintextRecord } from './record.js';
import type { UserId } from './userId.js';
import type { Envelope, PrekeyHeader } from './wire.js';
import { initiate, respond } from './x3dh.js';

/** How many earlier sessions a record keeps besides the current one. */
export const MAX_PREVIOUS_SESSIONS = 8;
/** Version of the stored session record (§10). */
export const SESSION_STATE_VERSION = 1;

/** The caller's own side of a conversation. */
export interface LocalParty {
  /** Our user id. */
  readonly userId: UserId;
  /** Our identity. */
  readonly identity: IdentityKeyPair;
}

/** An initiator's prekey header, sent with every message until the peer replies. */
export interface PendingPrekey {
  /** Our identity, as sent. */
  readonly localIdentity: PublicIdentity;
  /** The peer's signed prekey used. */
  readonly signedPrekeyId: number;
  /** The peer's one-time prekey used, or `null`. */
  readonly oneTimePrekeyId: number | null;
}

/** One X3DH + Double Ratchet session with a peer. Plain, immutable, structured-clonable. */
export interface SessionState {
  /** Our user id when the session was made. */
  readonly localUser: UserId;
  /** The peer. */
  readonly remoteUser: UserId;
  /** The peer's identity as bound into `AD`. */
  readonly remoteIdentity: PublicIdentity;
  /** `AD`. */
  readonly associatedData: Bytes;
  /** `EK_A`: names the session, so a resent prekey message finds it again. */
  readonly baseKey: DhPublicKey;
  /** Present while we initiated and have not yet heard back. */
  readonly pendingPrekey: PendingPrekey | null;
  /** The ratchet. */
  readonly ratchet: RatchetState;
}

/** A peer's sessions, as stored (§10). */
export interface SessionRecordState {
  /** Format version, so a later client can refuse or migrate old state. */
  readonly version: typeof SESSION_STATE_VERSION;
  /** The current session first, then up to {@link MAX_PREVIOUS_SESSIONS} earlier ones. */
  readonly sessions: readonly SessionState[];
}

/** A successfully encrypted message. */
export interface Encrypted {
  /** The state to keep. */
  readonly state: SessionRecordState;
  /** What to send. */
  readonly envelope: Envelope;
  /** The digest of the record sent, to match the peer's acknowledgement (§7.3). */
  readonly digest: MessageDigest;
}

/** A successfully decrypted message. */
export interface Decrypted {
  /** The state to keep. */
  readonly state: SessionRecordState;
  /** The record. */
  readonly record: PlaintextRecord;
  /** Its digest (§7.3). */
  readonly digest: MessageDigest;
  /**
   * The sender's identity in the session that decrypted it. Compare it with the contact's known
   * identity: a difference is a key change to show the user.
   */
  readonly remoteIdentity: PublicIdentity;
  /** Whether the message started a new session. */
  readonly newSession: boolean;
  /** The one-time prekey the message used, or `null`; delete it once this result is saved. */
  readonly usedOneTimePrekey: number | null;
}

/** An empty record. */
export function emptySessionRecord(): SessionRecordState {
  return { version: SESSION_STATE_VERSION, sessions: [] };
}

// ---- one session ------------------------------------------------------------------------------

/**
 * Starts a session with `peer` from their verified bundle (the initiator's side of §5 and §6.3).
 * Draws `EK_A` and then the first ratchet key from `keys`, in that order.
 */
export async function initiateSession(
  local: LocalParty,
  peer: UserId,
  bundle: PrekeyBundle,
  keys: KeySource = generateDhKeyPair,
): Promise<SessionState> {
  const ephemeral = await keys();
  const ratchetKey = await keys();
  const initiated = await initiate(local.userId, local.identity, peer, bundle, ephemeral);
  let ratchet: RatchetState;
  try {
    ratchet = await initiatorState(initiated.sharedSecret, bundle.signedPrekey.key, ratchetKey);
  } catch (error) {
    if (isProtocolError(error, 'NonContributoryKey')) throw new ProtocolError('InvalidSignedPrekey', 'invalid signed prekey');
    throw error;
  } finally {
    wipe(initiated.sharedSecret);
  }
  return {
    localUser: local.userId,
    remoteUser: peer,
    remoteIdentity: bundle.identity,
    associatedData: initiated.associatedData,
    baseKey: initiated.baseKey,
    pendingPrekey: {
      localIdentity: local.identity.publicIdentity,
      signedPrekeyId: initiated.signedPrekeyId,
      oneTimePrekeyId: initiated.oneTimePrekeyId,
    },
    ratchet,
  };
}

/** Whether a session can encrypt (a responder cannot before its first decryption). */
export function sessionCanEncrypt(session: SessionState): boolean {
  return canSend(session.ratchet);
}

/** Encrypts a record into an envelope, with the prekey header while one is pending. */
export async function sessionEncrypt(
  session: SessionState,
  record: PlaintextRecord,
): Promise<{ session: SessionState; envelope: Envelope; digest: MessageDigest }> {
  const sealed = await ratchetEncrypt(session.ratchet, record, session.associatedData);
  const pending = session.pendingPrekey;
  const prekey: PrekeyHeader | null =
    pending === null
      ? null
      : {
          identity: pending.localIdentity,
          baseKey: session.baseKey,
          signedPrekeyId: pending.signedPrekeyId,
          oneTimePrekeyId: pending.oneTimePrekeyId,
        };
  return {
    session: { ...session, ratchet: sealed.state },
    envelope: { header: sealed.header, prekey, ciphertext: sealed.ciphertext },
    digest: sealed.digest,
  };
}

/** Decrypts an envelope of this session; the input is unchanged whatever happens. */
async function sessionDecrypt(
  session: SessionState,
  envelope: Envelope,
  keys: KeySource,
): Promise<{ session: SessionState; record: PlaintextRecord; digest: MessageDigest }> {
  const opened = await ratchetDecrypt(session.ratchet, envelope.header, envelope.ciphertext, session.associatedData, keys);
  return {
    // Hearing back proves the peer has the session: stop sending the prekey header.
    session: { ...session, ratchet: opened.state, pendingPrekey: null },
    record: opened.record,
    digest: opened.digest,
  };
}

/** The responder's side: a session from a prekey message, not yet used to decrypt. */
async function respondSession(
  local: LocalParty,
  sender: UserId,
  prekey: PrekeyHeader,
  prekeys: PrekeyLookup,
): Promise<SessionState> {
  const signedPrekey = await prekeys.signedPrekey(prekey.signedPrekeyId);
  if (signedPrekey === null) throw new ProtocolError('UnknownSignedPrekey', `unknown signed prekey ${prekey.signedPrekeyId}`);
  let oneTimePrekey = null;
  if (prekey.oneTimePrekeyId !== null) {
    oneTimePrekey = await prekeys.oneTimePrekey(prekey.oneTimePrekeyId);
    if (oneTimePrekey === null) {
      throw new ProtocolError('UnknownOneTimePrekey', `unknown one-time prekey ${prekey.oneTimePrekeyId}`);
    }
  }
  let responded;
  try {
    responded = await respond(local.userId, local.identity, signedPrekey, oneTimePrekey, {
      user: sender,
      identity: prekey.identity,
      baseKey: prekey.baseKey,
    });
  } catch (error) {
    if (isProtocolError(error)) throw new ProtocolError('InvalidPrekeyMessage', 'invalid prekey message');
    throw error;
  }
  return {
    localUser: local.userId,
    remoteUser: sender,
    remoteIdentity: prekey.identity,
    associatedData: responded.associatedData,
    baseKey: prekey.baseKey,
    pendingPrekey: null,
    ratchet: responderState(responded.sharedSecret, signedPrekey.keyPair),
  };
}

// ---- a peer's sessions ------------------------------------------------------------------------

/** Makes `session` current, keeping the previous ones (bounded). */
export function promoteSession(state: SessionRecordState, session: SessionState): SessionRecordState {
  return { version: SESSION_STATE_VERSION, sessions: [session, ...state.sessions].slice(0, 1 + MAX_PREVIOUS_SESSIONS) };
}

/** Whether the record's current session can encrypt. */
export function sessionRecordCanEncrypt(state: SessionRecordState): boolean {
  const current = state.sessions[0];
  return current !== undefined && sessionCanEncrypt(current);
}

/** Encrypts a record with the current session (`NoSession` when there is none that can send). */
export async function sessionRecordEncrypt(state: SessionRecordState, record: PlaintextRecord): Promise<Encrypted> {
  const [current, ...rest] = state.sessions;
  if (current === undefined || !sessionCanEncrypt(current)) throw new ProtocolError('NoSession', 'no session with this peer');
  const { session, envelope, digest } = await sessionEncrypt(current, record);
  return { state: { version: SESSION_STATE_VERSION, sessions: [session, ...rest] }, envelope, digest };
}

/**
 * Decrypts an envelope from `sender`. Routes a prekey message to the session it belongs to (by
 * base key) or starts a new one; tries every session for an ordinary message. The session that
 * decrypts becomes current. On any error, nothing changed: there is no new state, and no
 * one-time prekey counts as used.
 *
 * Errors: `NoSession`, `UnknownSignedPrekey`, `UnknownOneTimePrekey`, `InvalidPrekeyMessage`,
 * `DuplicateMessage` (drop it silently: a replay or a resend), `TooManySkipped`,
 * `DecryptionFailed`.
 */
export async function sessionRecordDecrypt(
  state: SessionRecordState,
  local: LocalParty,
  sender: UserId,
  envelope: Envelope,
  prekeys: PrekeyLookup,
  keys: KeySource = generateDhKeyPair,
): Promise<Decrypted> {
  const prekey = envelope.prekey;
  if (prekey !== null && !state.sessions.some((s) => samePublicKey(s.baseKey, prekey.baseKey))) {
    const fresh = await respondSession(local, sender, prekey, prekeys);
    const opened = await sessionDecrypt(fresh, envelope, keys);
    return {
      state: promoteSession(state, opened.session),
      record: opened.record,
      digest: opened.digest,
      remoteIdentity: opened.session.remoteIdentity,
      newSession: true,
      usedOneTimePrekey: prekey.oneTimePrekeyId,
    };
  }
  let firstError: ProtocolError | null = null;
  for (const [index, session] of state.sessions.entries()) {
    if (prekey !== null && !samePublicKey(session.baseKey, prekey.baseKey)) continue;
    try {
      const opened = await sessionDecrypt(session, envelope, keys);
      const others = state.sessions.filter((_, i) => i !== index);
      return {
        state: { version: SESSION_STATE_VERSION, sessions: [opened.session, ...others] },
        record: opened.record,
        digest: opened.digest,
        remoteIdentity: opened.session.remoteIdentity,
        newSession: false,
        usedOneTimePrekey: null,
      };
    } catch (error) {
      if (!isProtocolError(error) || error.code === 'DuplicateMessage') throw error;
      firstError ??= error;
    }
  }
  throw firstError ?? new ProtocolError('NoSession', 'no session with this peer');
}

// ---- restoring stored state -------------------------------------------------------------------

/**
 * Checks that a value read back from storage is a version-1 session record of the right shape
 * (`UnsupportedVersion`, `InvalidState`). Keys are not re-validated as points: they were when
 * they entered the state, and the state never left this device.
 */
export function checkSessionRecordState(value: unknown): SessionRecordState {
  const invalid = (what: string): never => {
    throw new ProtocolError('InvalidState', `stored session record: ${what}`);
  };
  if (!isObject(value)) return invalid('not an object');
  if (value['version'] !== SESSION_STATE_VERSION) {
    throw new ProtocolError('UnsupportedVersion', 'unsupported session state version');
  }
  const sessions = value['sessions'];
  if (!Array.isArray(sessions) || sessions.length > 1 + MAX_PREVIOUS_SESSIONS) return invalid('sessions');
  for (const session of sessions as unknown[]) {
    if (!isObject(session)) return invalid('session');
    const ratchet = session['ratchet'];
    const ok =
      typeof session['localUser'] === 'string' &&
      typeof session['remoteUser'] === 'string' &&
      isIdentity(session['remoteIdentity']) &&
      session['associatedData'] instanceof Uint8Array &&
      isKeyBytes(session['baseKey']) &&
      (session['pendingPrekey'] === null || isPending(session['pendingPrekey'])) &&
      isRatchet(ratchet);
    if (!ok) return invalid('session fields');
  }
  return value as unknown as SessionRecordState;
}

function isObject(value: unknown): value is { readonly [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isKeyBytes(value: unknown): boolean {
  return value instanceof Uint8Array && value.length === 65 && value[0] === 0x04;
}

function isSecret(value: unknown): boolean {
  return value instanceof Uint8Array && value.length === 32;
}

function isCount(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}

function isIdentity(value: unknown): boolean {
  return (
    isObject(value) &&
    isKeyBytes(value['signing']) &&
    isKeyBytes(value['dh']) &&
    value['signature'] instanceof Uint8Array &&
    value['signature'].length === 64
  );
}

function isPending(value: unknown): boolean {
  return (
    isObject(value) &&
    isIdentity(value['localIdentity']) &&
    isCount(value['signedPrekeyId']) &&
    (value['oneTimePrekeyId'] === null || isCount(value['oneTimePrekeyId']))
  );
}

function isRatchet(value: unknown): boolean {
  if (!isObject(value)) return false;
  const selfKey = value['selfKey'];
  const skipped = value['skipped'];
  const previous = value['previousRemoteKeys'];
  return (
    isObject(selfKey) &&
    selfKey['privateKey'] instanceof CryptoKey &&
    isKeyBytes(selfKey['publicKey']) &&
    (value['remoteKey'] === null || isKeyBytes(value['remoteKey'])) &&
    isSecret(value['rootKey']) &&
    (value['sendingChain'] === null || isSecret(value['sendingChain'])) &&
    (value['receivingChain'] === null || isSecret(value['receivingChain'])) &&
    isCount(value['ns']) &&
    isCount(value['nr']) &&
    isCount(value['pn']) &&
    Array.isArray(skipped) &&
    skipped.length <= MAX_SKIPPED_KEYS &&
    (skipped as unknown[]).every(
      (k) => isObject(k) && isKeyBytes(k['ratchetKey']) && isCount(k['n']) && isSecret(k['messageKey']),
    ) &&
    Array.isArray(previous) &&
    previous.length <= REMEMBERED_CHAINS &&
    (previous as unknown[]).every(isKeyBytes)
  );
}

// ---- the convenience wrapper ------------------------------------------------------------------

/**
 * A peer's sessions, with operations queued so that two calls never interleave (each would
 * otherwise start from the same state and the later save would lose the earlier one's work).
 * `state` is the plain object to store; it is replaced, never mutated, by each operation.
 */
export class SessionRecord {
  #state: SessionRecordState;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(state: SessionRecordState = emptySessionRecord()) {
    this.#state = checkSessionRecordState(state);
  }

  /** The current state, to store (IndexedDB clones it). Do not mutate it. */
  get state(): SessionRecordState {
    return this.#state;
  }

  /** The current session, or `null`. */
  get current(): SessionState | null {
    return this.#state.sessions[0] ?? null;
  }

  /** Whether there is a session to encrypt with. */
  get canEncrypt(): boolean {
    return sessionRecordCanEncrypt(this.#state);
  }

  /** Runs `operation` after every earlier one, committing its state only if it succeeds. */
  #enqueue<T extends { state: SessionRecordState }>(operation: (state: SessionRecordState) => Promise<T>): Promise<T> {
    const result = this.#queue.then(async () => {
      const outcome = await operation(this.#state);
      this.#state = outcome.state;
      return outcome;
    });
    this.#queue = result.catch(() => undefined);
    return result;
  }

  /** Starts a session from a verified bundle and makes it current. */
  initiate(local: LocalParty, peer: UserId, bundle: PrekeyBundle, keys: KeySource = generateDhKeyPair): Promise<void> {
    return this.#enqueue(async (state) => ({
      state: promoteSession(state, await initiateSession(local, peer, bundle, keys)),
    })).then(() => undefined);
  }

  /** Drops every session (e.g. after the user accepted a changed identity). */
  clear(): Promise<void> {
    return this.#enqueue(async () => ({ state: emptySessionRecord() })).then(() => undefined);
  }

  /** Encrypts a record with the current session. See {@link sessionRecordEncrypt}. */
  encrypt(record: PlaintextRecord): Promise<Encrypted> {
    return this.#enqueue((state) => sessionRecordEncrypt(state, record));
  }

  /** Decrypts an envelope from `sender`. See {@link sessionRecordDecrypt}. */
  decrypt(
    local: LocalParty,
    sender: UserId,
    envelope: Envelope,
    prekeys: PrekeyLookup,
    keys: KeySource = generateDhKeyPair,
  ): Promise<Decrypted> {
    return this.#enqueue((state) => sessionRecordDecrypt(state, local, sender, envelope, prekeys, keys));
  }
}
