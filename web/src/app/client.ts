/**
 * The browser client's core: one identity, its store and its relay connection. It registers or
 * logs in on every connection, keeps prekeys topped up and rotated, sends through a durable
 * outbox, receives (decrypt → save → acknowledge), notices key changes and withheld messages,
 * and tells the UI what changed. No DOM here: `ui/` renders what this module stores.
 *
 * Guarantees, and how they are kept:
 *
 * - A browser closed at any moment never loses a message and never shows one twice. A received
 *   message, its ratchet state, the contact, the counters and the used one-time prekey are
 *   saved in one IndexedDB transaction, and only after it committed is `message:ack` sent; a
 *   message seen again (the relay pushes unacknowledged ones after every login) is recognised
 *   by its relay id, or failing that by the ratchet's `DuplicateMessage`.
 * - A message we send is saved with an outbox entry before anything goes out; its envelope is
 *   saved with the advanced session before the first send, and resent unchanged with the same
 *   client id after every reconnect until the relay answers (the relay stores it once).
 * - One conversation's ratchet steps run one at a time (`KeyedQueue` by peer).
 * - A contact's identity is trusted on first use; a different one later is kept as *pending*,
 *   shown as a warning, and blocks sending until the user accepts it.
 */

import { toBase64Url } from '../protocol/bytes.js';
import { isProtocolError, ProtocolError } from '../protocol/errors.js';
import { generateIdentity, type PublicIdentity, sameIdentityKeys } from '../protocol/identity.js';
import { samePublicKey } from '../protocol/keys.js';
import {
  generateOneTimePrekey,
  generateSignedPrekey,
  type OneTimePrekey,
  type PrekeyLookup,
  publicSignedPrekey,
  type SignedPrekey,
} from '../protocol/prekeys.js';
import { MAX_TEXT_LENGTH, textRecord } from '../protocol/record.js';
import { type SafetyNumber, safetyNumber } from '../protocol/safetyNumber.js';
import {
  emptySessionRecord,
  initiateSession,
  type LocalParty,
  promoteSession,
  sessionRecordCanEncrypt,
  sessionRecordDecrypt,
  sessionRecordEncrypt,
  type SessionRecordState,
} from '../protocol/session.js';
import { parseUserId, type UserId } from '../protocol/userId.js';
import {
  decodeBundleJson,
  decodeEnvelopeJson,
  decodePublicIdentityJson,
  type EnvelopeJson,
  envelopeToJson,
  type OneTimePrekeyJson,
  type SignedPrekeyJson,
} from '../protocol/wire.js';
import { type DeliveryReceipt, type LoginAnswer, prekeysHeld, type ReceivedMessage } from '../transport/events.js';
import { isRelayError, RelayConnection, RelayError } from '../transport/relay.js';
import type { Account, Contact, Conversation, Message, OutboxEntry, Store, Tx } from '../store/store.js';
import { type Counters, emptyCounters, missing, nextSent, noteLast, noteReceived, resetReceived, unconfirmedByPeer } from './counters.js';
import { AppError, errorCode } from './errors.js';
import { KeyedQueue } from './queue.js';

/** One-time prekeys kept uploaded. */
export const PREKEY_TARGET = 100;
/** Below this many at the relay, more are uploaded. */
export const PREKEY_LOW = 20;
/** How often the signed prekey is replaced. */
export const SIGNED_PREKEY_ROTATION_MS = 7 * 24 * 3600 * 1000;
/** How long replaced signed prekeys are kept, for messages still in flight. */
export const SIGNED_PREKEY_RETENTION_MS = 30 * 24 * 3600 * 1000;
/** How long a one-time prekey the relay handed out is kept for its prekey message. */
export const HANDED_OUT_PREKEY_RETENTION_MS = SIGNED_PREKEY_RETENTION_MS;

/** How often an open page checks whether its signed prekey is due for rotation. */
const ROTATION_CHECK_MS = 6 * 3600 * 1000;
/** When a flush stopped for a passing reason (a timeout, a busy relay), the next try, about. */
const RETRY_FLUSH_MS = 30_000;
/** A connection that lasted this long resets the reconnection backoff. */
const STABLE_CONNECTION_MS = 60_000;

/** Where the connection stands, for the banner. */
export type ConnectionState =
  | 'connecting' // opening the socket or logging in
  | 'online' // logged in
  | 'reconnecting' // dropped; socket.io-client retries with backoff
  | 'offline' // the browser says it has no network
  | 'rejected'; // the relay no longer accepts this identity: nothing to retry

/** What the UI listens to. */
export interface ClientListener {
  /** Stored data changed: a conversation's messages or contact (`peer`), or the list (`null`). */
  changed(peer: string | null): void;
  connection(state: ConnectionState): void;
  /** A passing problem to show (rate limited, a message that could not be sent…). */
  problem(error: unknown, peer: string | null): void;
}

export interface ClientOptions {
  /** The relay origin, e.g. `location.origin`. */
  readonly url: string;
  /** `host[:port]` the page was served from (`location.host`): login signatures bind it. */
  readonly host: string;
  /** Transports, in order of preference. */
  readonly transports?: readonly ('websocket' | 'polling')[];
}

const nowMs = (): number => Date.now();

/** A random client message id: 16 bytes, base64url (22 characters). */
export function newClientId(): string {
  return toBase64Url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

/** UTF-8 length, which is what a record's limit counts. */
function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

function newConversation(peer: string, now: number): Conversation {
  return { peer, counters: emptyCounters(), unread: 0, updatedAt: now, preview: '' };
}

function textPreview(text: string): string {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 80 ? `${line.slice(0, 79)}…` : line;
}

/** What seeing an identity for a contact meant. */
type Seen = 'new' | 'known' | 'changed';

/** Records that `identity` was seen for `peer`: TOFU for a new contact, pending when it differs. */
async function seeIdentity(tx: Tx, peer: string, identity: PublicIdentity, now: number): Promise<Seen> {
  const contact = await tx.contact(peer);
  if (contact === null) {
    await tx.putContact({ peer, identity, verified: false, pending: null, addedAt: now, changedAt: null });
    return 'new';
  }
  if (sameIdentityKeys(contact.identity, identity)) return 'known';
  if (contact.pending === null || !sameIdentityKeys(contact.pending, identity)) {
    await tx.putContact({ ...contact, pending: identity, changedAt: now });
    await tx.addMessage(notice(peer, 'key_changed', null, now));
  }
  return 'changed';
}

/**
 * A record reported missing arrived after all (late, or out of order): the notice that counted
 * it counts one fewer, and goes once none of its records is missing any more, so the history
 * never says the relay withheld a message that is right there. Within one identity the gaps
 * of notices do not overlap; the newest notice covering `counter` is the current identity's.
 */
async function resolveMissing(tx: Tx, peer: string, counter: bigint): Promise<void> {
  const covers = (m: Message): boolean =>
    m.direction === 'notice' &&
    m.kind === 'missing' &&
    m.missingFrom !== undefined &&
    m.counter !== null &&
    counter >= m.missingFrom &&
    counter < m.counter;
  // From the newest back to the notice, which is usually recent.
  const notice = (await tx.newestFirst(peer, (m) => !covers(m))).at(-1);
  if (notice?.id === undefined || !covers(notice)) return;
  const left = Number(notice.text ?? '1') - 1;
  if (left > 0) await tx.putMessage({ ...notice, text: String(left) });
  else await tx.deleteMessage(notice.id);
}

function notice(
  peer: string,
  kind: 'missing' | 'key_changed' | 'digest_mismatch' | 'unconfirmed',
  text: string | null,
  now: number,
): Message {
  return {
    peer,
    direction: 'notice',
    kind,
    text,
    counter: null,
    sentAt: now,
    receivedAt: now,
    serverId: null,
    clientId: null,
    status: 'received',
    error: null,
    digest: null,
  };
}

export class Client {
  readonly userId: UserId;
  readonly #store: Store;
  readonly #relay: RelayConnection;
  readonly #queue = new KeyedQueue();
  #account: Account;
  #listener: ClientListener | null = null;
  #state: ConnectionState = 'connecting';
  /** Peers whose identity was checked with the relay on this connection. */
  readonly #checked = new Set<string>();
  /** Contacts the relay says are online. */
  readonly online = new Set<string>();
  /** The conversation on screen: its messages do not count as unread. */
  #active: string | null = null;
  #loggedIn = false;
  #flushing: Promise<void> | null = null;
  #flushAgain = false;
  #registration: { resolve: () => void; reject: (error: unknown) => void } | null = null;
  #stopped = false;
  /** Consecutive failed logins and relay-ended connections, for the reconnection backoff. */
  #retries = 0;
  /** When the current connection logged in (`null` while not logged in). */
  #onlineSince: number | null = null;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** One-time prekey uploads completed, to tell a stale `prekeys:low` from a current one. */
  #topUps = 0;
  /** The outbox's next try after a flush stopped for a passing reason. */
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  /** Checks the signed prekey's age while the page stays open. */
  #rotationTimer: ReturnType<typeof setInterval> | undefined;

  private constructor(store: Store, account: Account, options: ClientOptions) {
    this.#store = store;
    this.#account = account;
    this.userId = account.userId;
    this.#relay = new RelayConnection({
      url: options.url,
      host: options.host,
      ...(options.transports === undefined ? {} : { transports: options.transports }),
    });
    this.#relay.onPushes({
      messages: (messages) => void this.#receiveBatch(messages).catch((e: unknown) => this.#problem(e, null)),
      delivered: (receipts) => void this.#delivered(receipts).catch((e: unknown) => this.#problem(e, null)),
      presence: (user, isOnline) => {
        if (isOnline) this.online.add(user);
        else this.online.delete(user);
        this.#emitChanged(user);
        this.#emitChanged(null);
      },
      prekeysLow: (remaining) => {
        // The relay warns on every bundle fetch below its mark, so warnings queue up behind a
        // top-up that is running; one that arrived before a top-up completed is dealt with.
        const toppedUpBefore = this.#topUps;
        void this.#maintainPrekeys(remaining, toppedUpBefore).catch((e: unknown) => this.#problem(e, null));
      },
    });
    const socket = this.#relay.socket;
    socket.on('connect', () => void this.#onConnect().catch((e: unknown) => this.#problem(e, null)));
    socket.on('disconnect', (reason) => {
      this.#loggedIn = false;
      this.online.clear();
      if (!this.#stopped && this.#state !== 'rejected') {
        this.#setState(this.#offlineState());
        // The relay ended the connection itself (it does so when a read of the queue failed or
        // the connection could not take a push: the client is to reconnect and catch up).
        // socket.io-client does not reconnect after that, so the client does.
        if (reason === 'io server disconnect') this.#reconnectLater();
      }
      this.#emitChanged(null);
    });
    socket.io.on('reconnect_attempt', () => {
      if (this.#state !== 'rejected') this.#setState(this.#offlineState());
    });
  }

  /** Opens the identity kept in this browser, or `null` when there is none. */
  static async open(store: Store, options: ClientOptions): Promise<Client | null> {
    const account = await store.read(['meta'], (tx) => tx.account());
    return account === null ? null : new Client(store, account, options);
  }

  /**
   * Makes a new identity for `input` and saves it (not yet registered: {@link start} registers
   * it, and {@link registered} tells how that went).
   */
  static async create(store: Store, input: string, options: ClientOptions): Promise<Client> {
    let userId: UserId;
    try {
      userId = parseUserId(input);
    } catch {
      throw new AppError('invalid_user_id');
    }
    const identity = await generateIdentity();
    const createdAt = nowMs();
    const signed = await generateSignedPrekey(identity, 1, Math.floor(createdAt / 1000));
    const oneTime: OneTimePrekey[] = [];
    for (let id = 2; id < 2 + PREKEY_TARGET; id++) oneTime.push(await generateOneTimePrekey(id));
    const account: Account = {
      userId,
      identity,
      createdAt,
      registered: false,
      nextPrekeyId: 2 + PREKEY_TARGET,
      server: options.url,
    };
    // Saved before the relay hears of it: if the page closes once the relay accepted, the keys
    // that the id now belongs to are still here, and the next start logs in with them.
    await store.write(['meta', 'signedPrekeys', 'oneTimePrekeys'], async (tx) => {
      await tx.putAccount(account);
      await tx.putSignedPrekey({ id: signed.id, prekey: signed, retiredAt: null });
      for (const prekey of oneTime) await tx.putOneTimePrekey(prekey);
    });
    return new Client(store, account, options);
  }

  get registered(): boolean {
    return this.#account.registered;
  }

  get connectionState(): ConnectionState {
    return this.#state;
  }

  get identity(): PublicIdentity {
    return this.#account.identity.publicIdentity;
  }

  /** Connects (and keeps reconnecting). Resolves once registered, or rejects if the id is taken. */
  start(listener: ClientListener): Promise<void> {
    this.#listener = listener;
    const ready = this.#account.registered
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => (this.#registration = { resolve, reject }));
    this.#setState('connecting');
    globalThis.addEventListener?.('offline', this.#onNetworkChange);
    globalThis.addEventListener?.('online', this.#onNetworkChange);
    this.#relay.open();
    return ready;
  }

  /** Disconnects for good. */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#rotationTimer);
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    globalThis.removeEventListener?.('offline', this.#onNetworkChange);
    globalThis.removeEventListener?.('online', this.#onNetworkChange);
    this.#relay.close();
  }

  readonly #onNetworkChange = (): void => {
    if (this.#loggedIn || this.#state === 'rejected') return;
    this.#setState(this.#offlineState());
    // Back online: try now rather than at the end of the current backoff.
    if (globalThis.navigator?.onLine !== false && !this.#relay.connected && !this.#stopped) this.#relay.open();
  };

  /**
   * Connects again after a backoff with jitter (1 s doubling to 30 s, ±50 %), for the cases
   * socket.io-client leaves to us: a failed login, a connection the relay ended. The backoff
   * only resets once a connection has lasted a minute, so a relay that keeps ending
   * connections right after the login is not hammered.
   */
  #reconnectLater(): void {
    if (this.#reconnectTimer !== undefined) return;
    if (this.#onlineSince !== null && Date.now() - this.#onlineSince >= STABLE_CONNECTION_MS) this.#retries = 0;
    this.#onlineSince = null;
    const delay = Math.min(30_000, 1000 * 2 ** this.#retries++) * (0.5 + Math.random());
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (!this.#stopped && !this.#relay.connected) this.#relay.open();
    }, delay);
  }

  #offlineState(): ConnectionState {
    return globalThis.navigator?.onLine === false ? 'offline' : 'reconnecting';
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#listener?.connection(state);
  }

  #emitChanged(peer: string | null): void {
    this.#listener?.changed(peer);
  }

  #problem(error: unknown, peer: string | null): void {
    this.#listener?.problem(error, peer);
  }

  get #local(): LocalParty {
    return { userId: this.#account.userId, identity: this.#account.identity };
  }

  // ---- connection ---------------------------------------------------------------------------

  async #onConnect(): Promise<void> {
    this.#setState('connecting');
    this.#checked.clear();
    let held: LoginAnswer;
    try {
      held = this.#account.registered ? await this.#relay.login(this.userId, this.#account.identity) : await this.#register();
    } catch (error) {
      if (isRelayError(error, 'authentication_failed') || isRelayError(error, 'user_taken')) {
        this.#setState('rejected');
        this.#relay.close();
        const registration = this.#registration;
        this.#registration = null;
        if (registration !== null) registration.reject(error);
        else this.#problem(error, null);
        return;
      }
      // A timeout or a busy relay: drop the connection and try again later (a client-side
      // disconnect turns socket.io-client's own reconnection off). Too many connections of
      // this user is shown, as only the person can close one of them.
      if (isRelayError(error, 'too_many_connections')) this.#problem(error, null);
      this.#relay.close();
      this.#reconnectLater();
      return;
    }
    this.#loggedIn = true;
    this.#onlineSince = Date.now();
    this.#setState('online');
    // A page left open for days still rotates its signed prekey (uploaded count unknown here:
    // only the rotation is checked; top-ups follow the relay's prekeys:low).
    clearInterval(this.#rotationTimer);
    this.#rotationTimer = setInterval(() => {
      if (this.#loggedIn) void this.#maintainPrekeys(Number.MAX_SAFE_INTEGER).catch(() => undefined);
    }, ROTATION_CHECK_MS);
    this.#emitChanged(null);
    try {
      await this.#noteHeld(prekeysHeld(held));
      await this.#maintainPrekeys(held.oneTimePrekeys);
    } catch (error) {
      this.#problem(error, null);
    }
    void this.flushOutbox();
    void this.#refreshDelivery().catch(() => undefined);
  }

  /** Registers the saved identity; a lost answer is recovered by logging in with it. */
  async #register(): Promise<LoginAnswer> {
    const [signed, oneTime] = await this.#store.read(['signedPrekeys', 'oneTimePrekeys'], async (tx) => {
      const all = await tx.signedPrekeys();
      const keys: OneTimePrekeyJson[] = [];
      for (let id = 2; id < 2 + PREKEY_TARGET; id++) {
        const prekey = await tx.oneTimePrekey(id);
        if (prekey !== null) keys.push({ id: prekey.id, key: toBase64Url(prekey.keyPair.publicKey) });
      }
      return [all.find((k) => k.retiredAt === null), keys] as const;
    });
    if (signed === undefined) throw new AppError('storage', 'no signed prekey saved');
    let answer;
    try {
      answer = await this.#relay.register(this.userId, this.#account.identity, signedPrekeyJson(signed.prekey), oneTime);
    } catch (error) {
      if (!isRelayError(error, 'user_taken')) throw error;
      // Perhaps ours: registered before, the answer lost. Only our key can log in, so only a
      // refused login means someone else holds the id; any other failure (a timeout, a busy
      // relay, a dropped connection) is retried like one, since giving up here would throw
      // away the keys the relay may already hold for us.
      try {
        answer = await this.#relay.login(this.userId, this.#account.identity);
      } catch (loginError) {
        throw isRelayError(loginError, 'authentication_failed') ? error : loginError;
      }
    }
    this.#account = { ...this.#account, registered: true };
    const account = this.#account;
    await this.#store.write(['meta'], (tx) => tx.putAccount(account));
    const registration = this.#registration;
    this.#registration = null;
    registration?.resolve();
    return answer;
  }

  /** Rotates the signed prekey weekly and tops one-time prekeys up to {@link PREKEY_TARGET}. */
  #maintainPrekeys(reported: number, toppedUpBefore?: number): Promise<void> {
    return this.#queue.run('\u0000prekeys', async () => {
      // A count from before the last top-up is stale: only the rotation is checked then.
      const uploaded = toppedUpBefore !== undefined && this.#topUps > toppedUpBefore ? Number.MAX_SAFE_INTEGER : reported;
      const now = nowMs();
      const signed = await this.#store.read(['signedPrekeys'], (tx) => tx.signedPrekeys());
      const current = signed.find((k) => k.retiredAt === null);
      let nextId = this.#account.nextPrekeyId;
      let fresh: SignedPrekey | null = null;
      if (current === undefined || now - current.prekey.createdAt * 1000 >= SIGNED_PREKEY_ROTATION_MS) {
        fresh = await generateSignedPrekey(this.#account.identity, nextId++, Math.floor(now / 1000));
      }
      const oneTime: OneTimePrekey[] = [];
      if (uploaded < PREKEY_LOW) {
        for (let i = uploaded; i < PREKEY_TARGET; i++) oneTime.push(await generateOneTimePrekey(nextId++));
      }
      if (fresh === null && oneTime.length === 0) return;
      const account: Account = { ...this.#account, nextPrekeyId: nextId };
      // Saved before uploading: a key the relay hands out must exist here.
      await this.#store.write(['meta', 'signedPrekeys', 'oneTimePrekeys'], async (tx) => {
        await tx.putAccount(account);
        if (fresh !== null) {
          await tx.putSignedPrekey({ id: fresh.id, prekey: fresh, retiredAt: null });
          for (const old of signed) {
            if (old.retiredAt === null) await tx.putSignedPrekey({ ...old, retiredAt: now });
            else if (now - old.retiredAt >= SIGNED_PREKEY_RETENTION_MS) await tx.deleteSignedPrekey(old.id);
          }
        }
        for (const prekey of oneTime) await tx.putOneTimePrekey(prekey);
      });
      this.#account = account;
      const keys = oneTime.map((k) => ({ id: k.id, key: toBase64Url(k.keyPair.publicKey) }));
      const answer = await this.#relay.uploadPrekeys(fresh === null ? null : signedPrekeyJson(fresh), keys);
      if (keys.length > 0) this.#topUps++;
      // Over the relay's cap: never handed out, so of no use to anyone.
      const dropped = oneTime.slice(answer.oneTimePrekeysKept ?? oneTime.length);
      if (dropped.length > 0) {
        await this.#store.write(['oneTimePrekeys'], async (tx) => {
          for (const prekey of dropped) await tx.deleteOneTimePrekey(prekey.id);
        });
      }
      await this.#noteHeldNow(prekeysHeld(answer));
    });
  }

  /** {@link #noteHeldNow}, in turn with the other prekey work. */
  #noteHeld(held: ReturnType<typeof prekeysHeld>): Promise<void> {
    return this.#queue.run('\u0000prekeys', () => this.#noteHeldNow(held));
  }

  /**
   * Takes note of the one-time prekeys the relay says it still holds. Bundles hand out the
   * lowest id first, so every key below the lowest held was handed out: it is kept for its
   * prekey message for {@link HANDED_OUT_PREKEY_RETENTION_MS}, then forgotten, rather than for
   * ever. A key at or above it is at the relay (or not yet uploaded). A relay that does not
   * say (older than the field) changes nothing.
   */
  async #noteHeldNow(held: ReturnType<typeof prekeysHeld>): Promise<void> {
    if (held === 'unknown') return;
    const from = held === 'none' ? null : held.from;
    const now = nowMs();
    await this.#store.write(['oneTimePrekeys'], async (tx) => {
      for (const prekey of await tx.oneTimePrekeys()) {
        const handedOut = from === null || prekey.id < from;
        if (!handedOut) {
          if (prekey.handedOutAt !== undefined) await tx.putOneTimePrekey({ id: prekey.id, keyPair: prekey.keyPair });
        } else if (prekey.handedOutAt === undefined) {
          await tx.putOneTimePrekey({ ...prekey, handedOutAt: now });
        } else if (now - prekey.handedOutAt >= HANDED_OUT_PREKEY_RETENTION_MS) {
          await tx.deleteOneTimePrekey(prekey.id);
        }
      }
    });
  }

  // ---- reading for the UI -------------------------------------------------------------------

  /** Conversations, most recent first. */
  async conversations(): Promise<{ conversation: Conversation; contact: Contact | null }[]> {
    return this.#store.read(['conversations', 'contacts'], async (tx) => {
      const list = await tx.conversations();
      list.sort((a, b) => b.updatedAt - a.updatedAt);
      const out = [];
      for (const conversation of list) out.push({ conversation, contact: await tx.contact(conversation.peer) });
      return out;
    });
  }

  /**
   * What a view of `peer`'s conversation shows: the messages from `since` (a local message id)
   * on, and at least the newest `atLeast`, oldest first; and whether earlier ones exist. A view
   * re-read on every change must not cost more as the history grows.
   */
  async conversation(
    peer: string,
    view: { readonly since: number | null; readonly atLeast: number },
  ): Promise<{ conversation: Conversation | null; contact: Contact | null; messages: Message[]; earlier: boolean }> {
    return this.#store.read(['conversations', 'contacts', 'messages'], async (tx) => {
      let taken = 0;
      let earlier = false;
      const shown = await tx.newestFirst(peer, (m) => {
        taken++;
        const wanted = taken <= view.atLeast || (view.since !== null && m.id !== undefined && m.id >= view.since);
        earlier = !wanted;
        return wanted;
      });
      // The one that ended the walk is not shown: it says there is more.
      if (earlier) shown.pop();
      return { conversation: await tx.conversation(peer), contact: await tx.contact(peer), messages: shown.reverse(), earlier };
    });
  }

  // ---- actions ------------------------------------------------------------------------------

  /**
   * Starts (or reopens) a conversation with `input`. When online, the relay confirms the user
   * exists and their identity is recorded (trusted on first use), so the safety number can be
   * compared before the first message.
   */
  async startConversation(input: string): Promise<UserId> {
    let peer: UserId;
    try {
      peer = parseUserId(input);
    } catch {
      throw new AppError('invalid_user_id');
    }
    if (peer === this.userId) throw new AppError('to_self');
    if (this.#loggedIn) await this.#queue.run(peer, () => this.#checkIdentity(peer, true));
    await this.#queue.run(peer, () =>
      this.#store.write(['conversations'], async (tx) => {
        if ((await tx.conversation(peer)) === null) await tx.putConversation(newConversation(peer, nowMs()));
      }),
    );
    this.#emitChanged(null);
    return peer;
  }

  /** The conversation on screen (`null`: none): clears its unread count. */
  async setActive(peer: string | null): Promise<void> {
    this.#active = peer;
    if (peer === null) return;
    const cleared = await this.#queue.run(peer, () =>
      this.#store.write(['conversations'], async (tx) => {
        const conversation = await tx.conversation(peer);
        if (conversation === null || conversation.unread === 0) return false;
        await tx.putConversation({ ...conversation, unread: 0 });
        return true;
      }),
    );
    if (cleared) this.#emitChanged(null);
    if (this.#loggedIn && !this.#checked.has(peer)) {
      // Notice a changed identity before the user types, not after.
      void this.#queue.run(peer, () => this.#checkIdentity(peer, false)).catch(() => undefined);
    }
  }

  /** Saves a message to `peer` with an outbox entry, then sends it. */
  async send(peerInput: string, text: string): Promise<void> {
    const peer = parseUserId(peerInput);
    if (peer === this.userId) throw new AppError('to_self');
    if (text.length === 0 || text.trim().length === 0) throw new AppError('empty');
    if (utf8Length(text) > MAX_TEXT_LENGTH) throw new AppError('message_too_large');
    await this.#queue.run(peer, () =>
      this.#store.write(['contacts', 'conversations', 'messages', 'outbox'], async (tx) => {
        const contact = await tx.contact(peer);
        if (contact?.pending != null) throw new AppError('key_changed');
        const now = nowMs();
        const conversation = (await tx.conversation(peer)) ?? newConversation(peer, now);
        const counters = nextSent(conversation.counters);
        const clientId = newClientId();
        const messageId = await tx.addMessage({
          peer,
          direction: 'out',
          kind: 'text',
          text,
          counter: counters.sent,
          sentAt: now,
          receivedAt: null,
          serverId: null,
          clientId,
          status: 'sending',
          error: null,
          digest: null,
        });
        await tx.putOutbox({ clientId, peer, messageId, envelope: null });
        await tx.putConversation({ ...conversation, counters, updatedAt: now, preview: textPreview(text) });
      }),
    );
    this.#emitChanged(peer);
    this.#emitChanged(null);
    void this.flushOutbox();
  }

  /**
   * Accepts `peer`'s changed identity, `expected`: the pending one whose safety number the
   * user was shown (the safety-number panel is where it is accepted). It becomes the trusted one (not verified). Refused with
   * `key_changed_again` when another identity is pending by now: the relay can swap what is
   * pending between the comparison and the click, and the user accepts what they saw or nothing.
   */
  async acceptKeyChange(peer: string, expected: PublicIdentity): Promise<void> {
    await this.#queue.run(peer, () =>
      this.#store.write(['contacts', 'sessions', 'outbox', 'conversations'], async (tx) => {
        const contact = await tx.contact(peer);
        if (contact === null || contact.pending === null) {
          // Accepted already (a second click, another render): nothing to do.
          if (contact !== null && sameIdentityKeys(contact.identity, expected)) return;
          throw new AppError('key_changed_again');
        }
        if (!sameIdentityKeys(contact.pending, expected)) throw new AppError('key_changed_again');
        const accepted = contact.pending;
        await tx.putContact({ ...contact, identity: accepted, pending: null, verified: false, changedAt: nowMs() });
        // The accepted identity starts its own count: its next record sets where counting
        // starts. Records it sent while pending did not count (see #receiveOne).
        const conversation = await tx.conversation(peer);
        if (conversation !== null) await tx.putConversation({ ...conversation, counters: resetReceived(conversation.counters) });
        // Sessions with the old identity are dropped, so the next message starts afresh.
        const stored = await tx.session(peer);
        if (stored !== null) {
          const kept = stored.state.sessions.filter((s) => sameIdentityKeys(s.remoteIdentity, accepted));
          await tx.putSession({ peer, state: { ...stored.state, sessions: kept } });
        }
        // Unsent envelopes were sealed for the old identity: seal them again.
        for (const entry of await tx.outbox()) {
          if (entry.peer === peer && entry.envelope !== null) await tx.putOutbox({ ...entry, envelope: null });
        }
      }),
    );
    this.#checked.delete(peer);
    this.#emitChanged(peer);
    this.#emitChanged(null);
    void this.flushOutbox();
  }

  /** Marks `peer`'s current identity verified (after comparing safety numbers). */
  async setVerified(peer: string, verified: boolean): Promise<void> {
    await this.#store.write(['contacts'], async (tx) => {
      const contact = await tx.contact(peer);
      if (contact === null || contact.pending !== null) return;
      await tx.putContact({ ...contact, verified });
    });
    this.#emitChanged(peer);
    this.#emitChanged(null);
  }

  /**
   * The safety number with `peer`, computed with their pending identity if it changed;
   * `identity` is the one it was computed with (what accepting it must name).
   */
  async safetyNumber(
    peer: string,
  ): Promise<{ number: SafetyNumber; identity: PublicIdentity; verified: boolean; changed: boolean } | null> {
    const contact = await this.#store.read(['contacts'], (tx) => tx.contact(peer));
    if (contact === null) return null;
    const theirs = contact.pending ?? contact.identity;
    const number = await safetyNumber(this.userId, this.#account.identity.publicIdentity, parseUserId(peer), theirs);
    return { number, identity: theirs, verified: contact.verified && contact.pending === null, changed: contact.pending !== null };
  }

  // ---- sending ------------------------------------------------------------------------------

  /** Sends everything in the outbox, oldest first. One flush at a time; a request during one reruns it. */
  flushOutbox(): Promise<void> {
    if (this.#flushing !== null) {
      this.#flushAgain = true;
      return this.#flushing;
    }
    this.#flushing = (async () => {
      do {
        this.#flushAgain = false;
        await this.#flushOnce();
      } while (this.#flushAgain && this.#loggedIn);
    })()
      // Never rejects (callers fire and forget): report, and the next connection retries.
      .catch((error: unknown) => this.#problem(error, null))
      .finally(() => {
        this.#flushing = null;
      });
    return this.#flushing;
  }

  async #flushOnce(): Promise<void> {
    if (!this.#loggedIn) return;
    const entries = await this.#store.read(['outbox'], (tx) => tx.outbox());
    const blocked = new Set<string>();
    for (const entry of entries) {
      if (blocked.has(entry.peer)) continue;
      for (let attempt = 0; ; attempt++) {
        if (!this.#loggedIn) return;
        try {
          await this.#sendOne(entry);
          break;
        } catch (error) {
          if (error instanceof AppError && error.code === 'key_changed') {
            blocked.add(entry.peer);
            this.#emitChanged(entry.peer);
            break;
          }
          if (error instanceof RelayError) {
            // A dropped connection flushes again once logged in; a timeout may leave the
            // connection up, so that and a relay still busy after five tries get a later flush.
            // `unauthenticated` is a send that reached a new connection before its login
            // finished (the login flushes again): the message is not at fault, so it stays.
            if (error.code === 'timeout' || error.code === 'disconnected' || error.code === 'unauthenticated') {
              return this.#flushLater();
            }
            if (error.retryable && attempt < 5) {
              if (error.code === 'rate_limited') this.#problem(error, entry.peer);
              await sleep(error.retryAfterMs ?? 1000 * 2 ** attempt);
              continue;
            }
            if (error.retryable) return this.#flushLater();
          }
          // Refused for good (unknown user, too large, a bundle that does not verify…).
          await this.#markFailed(entry, errorCode(error));
          this.#problem(error, entry.peer);
          break;
        }
      }
    }
  }

  /** Flushes again in about half a minute (±50 %), while logged in: one timer at a time. */
  #flushLater(): void {
    if (this.#flushTimer !== undefined || this.#stopped) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      if (this.#loggedIn) void this.flushOutbox();
    }, RETRY_FLUSH_MS * (0.5 + Math.random()));
  }

  async #sendOne(entry: OutboxEntry): Promise<void> {
    // Sealed or not, nothing leaves the outbox while the peer's identity has changed unaccepted:
    // an entry sealed before the change (the relay was busy, the connection dropped) waits too.
    // The entry as saved now, not as the flush listed it: a key accepted since then cleared
    // the envelope sealed for the old identity (it is sealed again below), and an entry sent or
    // dropped meanwhile is gone. Check, re-read and seal are one task of the peer's queue: as
    // two, a prekey message from another identity, received in between (the relay can time
    // one for the wait on `user:identity`), made its session current and was sealed for.
    const envelope = await this.#queue.run(entry.peer, async () => {
      await this.#confirmIdentity(entry.peer);
      const current = await this.#store.read(['outbox'], (tx) => tx.outboxEntry(entry.clientId));
      if (current === null) return null;
      return current.envelope ?? this.#seal(current);
    });
    if (envelope === null) return;
    const answer = await this.#relay.send({ to: entry.peer, id: entry.clientId, envelope });
    await this.#store.write(['messages', 'outbox'], async (tx) => {
      const message = await tx.message(entry.messageId);
      if (message !== null) {
        const status = message.status === 'delivered' ? 'delivered' : 'stored';
        await tx.putMessage({ ...message, status, serverId: answer.id });
      }
      await tx.deleteOutbox(entry.clientId);
    });
    this.#emitChanged(entry.peer);
  }

  async #markFailed(entry: OutboxEntry, code: string): Promise<void> {
    await this.#store.write(['messages', 'outbox'], async (tx) => {
      const message = await tx.message(entry.messageId);
      if (message !== null) await tx.putMessage({ ...message, status: 'failed', error: code });
      await tx.deleteOutbox(entry.clientId);
    });
    this.#emitChanged(entry.peer);
  }

  /**
   * Checks `peer`'s identity with the relay (once per connection): a changed one becomes
   * pending. Runs in the peer's queue. `strict`: unknown users are an error.
   */
  async #checkIdentity(peer: string, strict: boolean): Promise<void> {
    if (this.#checked.has(peer)) return;
    let json: unknown;
    try {
      json = await this.#relay.identity(peer);
    } catch (error) {
      if (strict || !isRelayError(error, 'unknown_user')) throw error;
      return;
    }
    const identity = await decodePublicIdentityJson(json);
    const seen = await this.#store.write(['contacts', 'messages'], (tx) => seeIdentity(tx, peer, identity, nowMs()));
    this.#checked.add(peer);
    if (seen === 'changed') this.#emitChanged(peer);
  }

  /** Refuses while a changed identity awaits acceptance; checks the identity with the relay once per connection. */
  async #confirmIdentity(peer: string): Promise<void> {
    const blockedNow = async (): Promise<void> => {
      const contact = await this.#store.read(['contacts'], (tx) => tx.contact(peer));
      if (contact?.pending != null) throw new AppError('key_changed');
    };
    await blockedNow();
    await this.#checkIdentity(peer, true);
    await blockedNow();
  }

  /**
   * Encrypts an outbox entry (starting a session when needed); saves envelope and session
   * together. Runs in the peer's queue, after {@link #confirmIdentity}. Seals only for the
   * accepted identity: the current session is the one that last decrypted, which may be a
   * pending identity's.
   */
  async #seal(entry: OutboxEntry): Promise<EnvelopeJson> {
    const peer = parseUserId(entry.peer);
    const loaded = await this.#store.read(['contacts', 'sessions', 'messages', 'conversations', 'outbox'], async (tx) => ({
      contact: await tx.contact(peer),
      session: await tx.session(peer),
      message: await tx.message(entry.messageId),
      conversation: await tx.conversation(peer),
      current: await tx.outboxEntry(entry.clientId),
    }));
    // Sealed meanwhile (a flush raced a key acceptance): use what was saved.
    if (loaded.current?.envelope != null) return loaded.current.envelope;
    if (loaded.message === null || loaded.message.text === null || loaded.message.counter === null) {
      throw new AppError('storage', 'outbox entry without its message');
    }
    let state: SessionRecordState = loaded.session?.state ?? emptySessionRecord();
    // Held while a change is pending, and never sealed with a session of another identity
    // than the accepted one, whatever made it current.
    if (loaded.contact?.pending != null) throw new AppError('key_changed');
    const session = state.sessions[0];
    if (session !== undefined && (loaded.contact === null || !sameIdentityKeys(session.remoteIdentity, loaded.contact.identity))) {
      throw new AppError('key_changed');
    }
    if (!sessionRecordCanEncrypt(state)) {
      const bundle = await decodeBundleJson(await this.#relay.requestBundle(peer));
      if (bundle.userId !== peer) throw new ProtocolError('BundleUserMismatch', 'the relay sent another user’s bundle');
      const seen = await this.#store.write(['contacts', 'messages'], (tx) => seeIdentity(tx, peer, bundle.identity, nowMs()));
      if (seen === 'changed') {
        this.#emitChanged(peer);
        throw new AppError('key_changed');
      }
      state = promoteSession(state, await initiateSession(this.#local, peer, bundle));
    }
    const counters = loaded.conversation?.counters ?? emptyCounters();
    const record = textRecord(loaded.message.text, {
      sentAt: BigInt(loaded.message.sentAt),
      counter: loaded.message.counter,
      lastReceivedCounter: counters.lastCounter,
      lastReceivedDigest: counters.lastDigest,
    });
    const sealed = await sessionRecordEncrypt(state, record);
    const envelope = envelopeToJson(sealed.envelope);
    const message = loaded.message;
    await this.#store.write(['sessions', 'outbox', 'messages'], async (tx) => {
      await tx.putSession({ peer, state: sealed.state });
      await tx.putOutbox({ ...entry, envelope });
      await tx.putMessage({ ...message, digest: sealed.digest });
    });
    return envelope;
  }

  // ---- receiving ----------------------------------------------------------------------------

  async #receiveBatch(messages: ReceivedMessage[]): Promise<void> {
    const saved = await Promise.all(
      messages.map((message) => {
        let peer: UserId;
        try {
          peer = parseUserId(message.from);
        } catch {
          // The relay names senders by valid ids; nothing to show or keep, so acknowledged.
          return Promise.resolve(message.id);
        }
        // Queued under the parsed id, as every other use of the peer's session is: the relay's
        // spelling ("Bob", "BOB") must not open a second queue onto the same session.
        return this.#queue.run(peer, () => this.#receiveOne(message, peer)).then(
          () => message.id,
          // Not saved (storage failed): not acknowledged, so the relay pushes it again.
          (error: unknown) => {
            this.#problem(error, peer);
            return null;
          },
        );
      }),
    );
    const ids = saved.filter((id): id is number => id !== null);
    if (ids.length === 0) return;
    try {
      await this.#relay.ack(ids);
    } catch {
      // Pushed again after the next login; recognised by relay id and acknowledged then.
    }
  }

  /** Decrypts and saves one message from `peer` (never acknowledged before this resolves). */
  async #receiveOne(message: ReceivedMessage, peer: UserId): Promise<void> {
    const known = await this.#store.read(['messages'], (tx) => tx.receivedByServerId(peer, message.id));
    if (known !== null) return; // saved before; the acknowledgement was lost
    let envelope;
    try {
      envelope = await decodeEnvelopeJson(message.envelope);
    } catch {
      return this.#saveUndecryptable(peer, message);
    }
    const state = (await this.#store.read(['sessions'], (tx) => tx.session(peer)))?.state ?? emptySessionRecord();
    const lookup: PrekeyLookup = {
      signedPrekey: async (id) =>
        (await this.#store.read(['signedPrekeys'], async (tx) => (await tx.signedPrekeys()).find((k) => k.id === id)))
          ?.prekey ?? null,
      oneTimePrekey: (id) => this.#store.read(['oneTimePrekeys'], (tx) => tx.oneTimePrekey(id)),
    };
    let decrypted;
    try {
      decrypted = await sessionRecordDecrypt(state, this.#local, peer, envelope, lookup);
    } catch (error) {
      if (isProtocolError(error, 'DuplicateMessage')) return; // a replay or a resend: drop silently
      if (isProtocolError(error)) return this.#saveUndecryptable(peer, message);
      throw error;
    }
    const now = nowMs();
    const record = decrypted.record;
    const body = record.body;
    const shown = body.kind !== 'receipt';
    await this.#store.write(['sessions', 'contacts', 'conversations', 'messages', 'oneTimePrekeys'], async (tx) => {
      await tx.putSession({ peer, state: decrypted.state });
      if (decrypted.usedOneTimePrekey !== null) await tx.deleteOneTimePrekey(decrypted.usedOneTimePrekey);
      const seen = await seeIdentity(tx, peer, decrypted.remoteIdentity, now);
      const conversation = (await tx.conversation(peer)) ?? newConversation(peer, now);
      let counters: Counters;
      if (seen === 'changed') {
        // From an identity the user has not accepted (shown, after the key-change notice): it
        // neither confirms our records nor opens or closes gaps, or a relay holding such an
        // identity could mark everything of ours delivered, or reset the count to hide what
        // it withheld. Only what our next record names is noted; nothing is sent before the
        // identity is accepted, and accepting starts the count afresh.
        counters = noteLast(conversation.counters, record.counter, decrypted.digest);
      } else {
        counters = noteReceived(conversation.counters, record.counter, decrypted.digest, record.lastReceivedCounter);
        const before = missing(conversation.counters);
        const after = missing(counters);
        if (after > before) {
          // The records from `missingFrom` up to just below this one never came (so far).
          const gap = after - before;
          await tx.addMessage({ ...notice(peer, 'missing', String(gap), now), counter: record.counter, missingFrom: record.counter - gap });
        } else if (after < before) {
          await resolveMissing(tx, peer, record.counter);
        }
        await this.#checkOurs(tx, peer, record.lastReceivedCounter, record.lastReceivedDigest, conversation.counters, safeNumber(record.sentAt) ?? 0, now);
      }
      const text = body.kind === 'text' ? body.text : null;
      // A receipt counts (above) but is no message to show: kept, it was an empty bubble.
      if (shown) await tx.addMessage({
        peer,
        direction: 'in',
        kind: body.kind === 'text' ? 'text' : body.kind === 'unsupported' ? 'unsupported' : 'text',
        text,
        counter: record.counter,
        sentAt: showableTime(safeNumber(record.sentAt) ?? message.receivedAt, now),
        receivedAt: now,
        serverId: message.id,
        clientId: null,
        status: 'received',
        error: null,
        digest: null,
      });
      const unread = shown && !this.#isActive(peer) ? conversation.unread + 1 : conversation.unread;
      await tx.putConversation({
        ...conversation,
        counters,
        unread,
        updatedAt: shown ? now : conversation.updatedAt,
        preview: text !== null ? textPreview(text) : body.kind === 'unsupported' ? 'Unsupported message' : conversation.preview,
      });
    });
    this.#emitChanged(peer);
    this.#emitChanged(null);
  }

  /**
   * The peer's record says (inside the encryption) which of our records it received last:
   * everything up to it arrived, whatever the relay reported, and that record's digest must be
   * the one we sent (§7.3), or the hash chain is broken. Records after it that the relay
   * reported delivered long before the peer wrote this one never reached the peer's device.
   */
  async #checkOurs(tx: Tx, peer: string, upTo: bigint, digest: Uint8Array, before: Counters, theirSentAt: number, now: number): Promise<void> {
    const confirmedBefore = before.peerReceived;
    // Our records up to `settled` were checked when the peer first confirmed them; only later
    // ones can change now. Ours are numbered in the order they were saved, so they are the
    // newest of ours: the walk back ends at the first one at or below `settled`.
    const settled = upTo < confirmedBefore ? upTo : confirmedBefore;
    if (before.sent <= settled) return;
    const isOurs = (m: Message): m is Message & { counter: bigint } => m.direction === 'out' && m.counter !== null;
    const ours = (await tx.newestFirst(peer, (m) => !isOurs(m) || m.counter > settled)).filter(isOurs).reverse();
    for (const message of ours) {
      if (message.counter > upTo) continue;
      if (message.status === 'stored' || message.status === 'sending') {
        await tx.putMessage({ ...message, status: 'delivered', deliveredAt: message.deliveredAt ?? now });
      }
      if (upTo > confirmedBefore && message.counter === upTo && message.digest !== null && !samePublicKey(message.digest, digest)) {
        await tx.addMessage(notice(peer, 'digest_mismatch', null, now));
      }
    }
    const candidates = ours.filter((m) => m.unconfirmed !== true);
    const flagged = unconfirmedByPeer(
      candidates.map((m, index) => ({ counter: m.counter, deliveredAt: m.deliveredAt ?? null, index })),
      upTo,
      theirSentAt,
    );
    const withheld = flagged.map((f) => candidates[f.index]).filter((m): m is (typeof candidates)[number] => m !== undefined);
    for (const message of withheld) await tx.putMessage({ ...message, unconfirmed: true });
    if (withheld.length > 0) await tx.addMessage(notice(peer, 'unconfirmed', String(withheld.length), now));
  }

  #isActive(peer: string): boolean {
    return this.#active === peer && globalThis.document?.visibilityState !== 'hidden';
  }

  /** Keeps a message that did not decrypt, shown as such here; never reported to anyone. */
  async #saveUndecryptable(peer: string, message: ReceivedMessage): Promise<void> {
    const now = nowMs();
    await this.#store.write(['conversations', 'messages'], async (tx) => {
      await tx.addMessage({
        peer,
        direction: 'in',
        kind: 'undecryptable',
        text: null,
        counter: null,
        sentAt: showableTime(message.receivedAt, now),
        receivedAt: now,
        serverId: message.id,
        clientId: null,
        status: 'received',
        error: null,
        digest: null,
      });
      const conversation = (await tx.conversation(peer)) ?? newConversation(peer, now);
      await tx.putConversation({
        ...conversation,
        unread: this.#isActive(peer) ? conversation.unread : conversation.unread + 1,
        updatedAt: now,
        preview: 'A message that could not be decrypted',
      });
    });
    this.#emitChanged(peer);
    this.#emitChanged(null);
  }

  async #delivered(receipts: DeliveryReceipt[]): Promise<void> {
    const peers = await this.#store.write(['messages'], async (tx) => {
      const touched = new Set<string>();
      for (const receipt of receipts) {
        const message = await tx.messageByClientId(receipt.clientId);
        if (message === null || message.direction !== 'out' || message.status === 'delivered') continue;
        await tx.putMessage({ ...message, status: 'delivered', serverId: receipt.id, deliveredAt: nowMs() });
        touched.add(message.peer);
      }
      return touched;
    });
    for (const peer of peers) this.#emitChanged(peer);
  }

  /** Asks the relay about stored messages not yet known delivered (receipts missed offline). */
  async #refreshDelivery(): Promise<void> {
    const pending = await this.#store.read(['messages'], (tx) => tx.undelivered());
    for (let i = 0; i < pending.length; i += 1000) {
      const chunk = pending.slice(i, i + 1000);
      const statuses = await this.#relay.status(chunk.map((m) => m.serverId ?? 0));
      const delivered = new Set(statuses.filter((s) => s.status === 'delivered').map((s) => s.id));
      const receipts = chunk
        .filter((m) => m.serverId !== null && delivered.has(m.serverId) && m.clientId !== null)
        .map((m) => ({ id: m.serverId ?? 0, clientId: m.clientId ?? '', to: m.peer }));
      if (receipts.length > 0) await this.#delivered(receipts);
    }
  }
}

function signedPrekeyJson(prekey: SignedPrekey): SignedPrekeyJson {
  const pub = publicSignedPrekey(prekey);
  return { id: pub.id, key: toBase64Url(pub.key), createdAt: pub.createdAt, signature: toBase64Url(pub.signature) };
}

/** The largest time a JavaScript `Date` holds, in milliseconds either side of 1970. */
const MAX_DATE_MS = 8.64e15;

/**
 * A time from the peer or the relay as one a `Date` can hold (±8.64e15 ms), else `fallback`:
 * a larger one, saved and shown, made every later rendering of the conversation throw.
 */
function showableTime(ms: number, fallback: number): number {
  return Math.abs(ms) <= MAX_DATE_MS ? ms : fallback;
}

function safeNumber(value: bigint): number | null {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
