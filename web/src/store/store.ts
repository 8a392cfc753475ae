/**
 * Everything the browser client keeps, in one IndexedDB database: the identity, prekeys,
 * sessions, contacts, conversations with their counters, the message history and the outbox.
 *
 * Private keys are non-extractable `CryptoKey`s, stored as they are (structured clone keeps
 * them usable and never exposes their bytes). Values are plain objects and are never mutated
 * after being read: writers build new ones.
 *
 * | store            | key                 | what                                                 |
 * |------------------|---------------------|------------------------------------------------------|
 * | `meta`           | `'account'`         | {@link Account}: user id, identity, id counter       |
 * | `signedPrekeys`  | `id`                | {@link StoredSignedPrekey}: current and retired ones |
 * | `oneTimePrekeys` | `id`                | {@link StoredOneTimePrekey}: deleted once used, or 30 days after the relay handed it out |
 * | `sessions`       | `peer`              | {@link StoredSession}: the peer's session record      |
 * | `contacts`       | `peer`              | {@link Contact}: accepted identity, pending change    |
 * | `conversations`  | `peer`              | {@link Conversation}: counters, unread, preview       |
 * | `messages`       | `id` (auto)         | {@link Message}; indexes by peer, relay id (with direction), client id, status |
 * | `outbox`         | `seq` (auto)        | {@link OutboxEntry}: to send, oldest first            |
 */

import type { Counters } from '../app/counters.js';
import type { IdentityKeyPair, PublicIdentity } from '../protocol/identity.js';
import type { OneTimePrekey, SignedPrekey } from '../protocol/prekeys.js';
import type { MessageDigest } from '../protocol/record.js';
import type { SessionRecordState } from '../protocol/session.js';
import type { UserId } from '../protocol/userId.js';
import type { EnvelopeJson } from '../protocol/wire.js';
import { Db, type Migration, request } from './idb.js';

/** The database's name. One identity per browser profile, like one per `--home` folder. */
export const DB_NAME = 'sotto';

export interface Account {
  readonly userId: UserId;
  readonly identity: IdentityKeyPair;
  /** When this identity was made, Unix ms. */
  readonly createdAt: number;
  /** Whether the relay accepted the registration (false: retry it on the next start). */
  readonly registered: boolean;
  /** The next prekey id to hand out (signed and one-time prekeys share one space). */
  readonly nextPrekeyId: number;
  /** The relay origin this identity registered with. */
  readonly server: string;
}

export interface StoredSignedPrekey {
  readonly id: number;
  readonly prekey: SignedPrekey;
  /** When it stopped being the current one (Unix ms); deleted 30 days after. */
  readonly retiredAt: number | null;
}

export interface StoredSession {
  readonly peer: string;
  readonly state: SessionRecordState;
}

export interface Contact {
  readonly peer: string;
  /** The identity accepted: first seen (TOFU), or trusted after a change. */
  readonly identity: PublicIdentity;
  /** Whether the user compared safety numbers and marked this identity verified. */
  readonly verified: boolean;
  /** A different identity seen since and not accepted yet: sending is blocked meanwhile. */
  readonly pending: PublicIdentity | null;
  readonly addedAt: number;
  readonly changedAt: number | null;
}

export interface Conversation {
  readonly peer: string;
  readonly counters: Counters;
  /** Messages received since the conversation was last open. */
  readonly unread: number;
  /** Last activity, Unix ms: orders the conversation list. */
  readonly updatedAt: number;
  /** A short preview of the last message ('' for none). */
  readonly preview: string;
}

export type MessageStatus = 'sending' | 'stored' | 'delivered' | 'failed' | 'received';

export type MessageKind =
  | 'text' // a text record, ours or theirs
  | 'undecryptable' // a message that did not decrypt: shown as such, never reported
  | 'unsupported' // a record kind this version does not know
  | 'missing' // notice: the peer's counter jumped
  | 'key_changed' // notice: the peer's identity changed
  | 'digest_mismatch' // notice: the peer names a record of ours by a digest we did not send
  | 'unconfirmed'; // notice: the relay said delivered, the peer's records say not received

export interface Message {
  /** Local id, assigned on insert. */
  readonly id?: number;
  readonly peer: string;
  /** Ours, theirs, or a notice this client wrote. */
  readonly direction: 'out' | 'in' | 'notice';
  readonly kind: MessageKind;
  /** Text of a text message; for a `missing` notice, how many. */
  readonly text: string | null;
  /**
   * The record counter (ours for 'out', theirs for 'in'); for a `missing` notice, the counter of
   * the record that revealed the gap (the missing ones are `missingFrom` up to just below it).
   */
  readonly counter: bigint | null;
  /** The sender's clock (ours, or the record's `sent_at`), Unix ms. */
  readonly sentAt: number;
  /** When this client received it, Unix ms. */
  readonly receivedAt: number | null;
  /** The relay's id. */
  readonly serverId: number | null;
  /** Our own id for it (outgoing). */
  readonly clientId: string | null;
  readonly status: MessageStatus;
  /** For `failed`: the stable error code. */
  readonly error: string | null;
  /** For outgoing: the digest of the record sent (§7.3). */
  readonly digest: MessageDigest | null;
  /** For outgoing: when the relay reported it delivered (our clock). */
  readonly deliveredAt?: number;
  /** For outgoing: a newer record of the peer's says it never arrived (shown once). */
  readonly unconfirmed?: true;
  /** For a `missing` notice: the first counter of the gap (absent on notices saved before). */
  readonly missingFrom?: bigint;
}

/** A one-time prekey with what this client learnt of it from the relay. */
export type StoredOneTimePrekey = OneTimePrekey & {
  /** When the relay was first seen no longer holding it (handed out), Unix ms. */
  readonly handedOutAt?: number;
};

export interface OutboxEntry {
  readonly seq?: number;
  readonly clientId: string;
  readonly peer: string;
  readonly messageId: number;
  /** The sealed envelope, once encrypted; resent unchanged until the relay answers. */
  readonly envelope: EnvelopeJson | null;
}

const migrations: readonly Migration[] = [
  (db) => {
    db.createObjectStore('meta');
    db.createObjectStore('signedPrekeys', { keyPath: 'id' });
    db.createObjectStore('oneTimePrekeys', { keyPath: 'id' });
    db.createObjectStore('sessions', { keyPath: 'peer' });
    db.createObjectStore('contacts', { keyPath: 'peer' });
    db.createObjectStore('conversations', { keyPath: 'peer' });
    const messages = db.createObjectStore('messages', { keyPath: 'id', autoIncrement: true });
    messages.createIndex('byPeer', ['peer', 'id']);
    // Relay ids are per relay, unique per recipient: one row per (peer, relay id); version 3
    // adds the direction.
    messages.createIndex('byServerId', ['peer', 'serverId'], { unique: true });
    messages.createIndex('byClientId', 'clientId', { unique: true });
    const outbox = db.createObjectStore('outbox', { keyPath: 'seq', autoIncrement: true });
    outbox.createIndex('byClientId', 'clientId', { unique: true });
  },
  // Version 2: finding the messages that wait for a delivery report (every login) read every
  // message ever kept; by status it reads only those.
  (_db, tx) => {
    tx.objectStore('messages').createIndex('byStatus', 'status');
  },
  // Version 3: a relay id names a message in one direction only (the relay files ours and
  // theirs in separate queues). Keyed without the direction, an incoming message under the
  // id of one of ours was taken for one already saved and dropped undecrypted, and could not
  // have been saved anyway. The rows of version 2 are unique under the wider key too.
  (_db, tx) => {
    const messages = tx.objectStore('messages');
    if (messages.indexNames.contains('byServerId')) messages.deleteIndex('byServerId');
    messages.createIndex('byServerId', ['peer', 'direction', 'serverId'], { unique: true });
  },
];

/** Typed access to the stores inside one transaction. */
export class Tx {
  constructor(readonly raw: IDBTransaction) {}

  #store(name: string): IDBObjectStore {
    return this.raw.objectStore(name);
  }

  async account(): Promise<Account | null> {
    return ((await request(this.#store('meta').get('account'))) as Account | undefined) ?? null;
  }
  async putAccount(account: Account): Promise<void> {
    await request(this.#store('meta').put(account, 'account'));
  }

  async signedPrekeys(): Promise<StoredSignedPrekey[]> {
    return (await request(this.#store('signedPrekeys').getAll())) as StoredSignedPrekey[];
  }
  async putSignedPrekey(prekey: StoredSignedPrekey): Promise<void> {
    await request(this.#store('signedPrekeys').put(prekey));
  }
  async deleteSignedPrekey(id: number): Promise<void> {
    await request(this.#store('signedPrekeys').delete(id));
  }

  async oneTimePrekey(id: number): Promise<StoredOneTimePrekey | null> {
    return ((await request(this.#store('oneTimePrekeys').get(id))) as StoredOneTimePrekey | undefined) ?? null;
  }
  async oneTimePrekeys(): Promise<StoredOneTimePrekey[]> {
    return (await request(this.#store('oneTimePrekeys').getAll())) as StoredOneTimePrekey[];
  }
  async putOneTimePrekey(prekey: StoredOneTimePrekey): Promise<void> {
    await request(this.#store('oneTimePrekeys').put(prekey));
  }
  async deleteOneTimePrekey(id: number): Promise<void> {
    await request(this.#store('oneTimePrekeys').delete(id));
  }

  async session(peer: string): Promise<StoredSession | null> {
    return ((await request(this.#store('sessions').get(peer))) as StoredSession | undefined) ?? null;
  }
  async putSession(session: StoredSession): Promise<void> {
    await request(this.#store('sessions').put(session));
  }

  async contact(peer: string): Promise<Contact | null> {
    return ((await request(this.#store('contacts').get(peer))) as Contact | undefined) ?? null;
  }
  async putContact(contact: Contact): Promise<void> {
    await request(this.#store('contacts').put(contact));
  }

  async conversation(peer: string): Promise<Conversation | null> {
    return ((await request(this.#store('conversations').get(peer))) as Conversation | undefined) ?? null;
  }
  async conversations(): Promise<Conversation[]> {
    return (await request(this.#store('conversations').getAll())) as Conversation[];
  }
  async putConversation(conversation: Conversation): Promise<void> {
    await request(this.#store('conversations').put(conversation));
  }

  async message(id: number): Promise<Message | null> {
    return ((await request(this.#store('messages').get(id))) as Message | undefined) ?? null;
  }
  /** Inserts a message; returns its local id. */
  async addMessage(message: Message): Promise<number> {
    return (await request(this.#store('messages').add(message))) as number;
  }
  async putMessage(message: Message): Promise<void> {
    await request(this.#store('messages').put(message));
  }
  async deleteMessage(id: number): Promise<void> {
    await request(this.#store('messages').delete(id));
  }
  /** The message `peer` sent us under relay id `serverId` (never one of ours to them). */
  async receivedByServerId(peer: string, serverId: number): Promise<Message | null> {
    const index = this.#store('messages').index('byServerId');
    return ((await request(index.get([peer, 'in', serverId]))) as Message | undefined) ?? null;
  }
  async messageByClientId(clientId: string): Promise<Message | null> {
    const index = this.#store('messages').index('byClientId');
    return ((await request(index.get(clientId))) as Message | undefined) ?? null;
  }
  /**
   * A conversation's messages, oldest first, all at once. Nothing that runs per message or per
   * render uses it any more (see {@link newestFirst}); the in-page benchmark times it as the
   * read each arrival used to make.
   */
  async history(peer: string): Promise<Message[]> {
    const index = this.#store('messages').index('byPeer');
    return (await request(index.getAll(peerRange(peer)))) as Message[];
  }
  /**
   * Walks a conversation from its newest message back, handing each to `goOn` until it says
   * stop (or the oldest is passed), and returns every message it handed over, newest first,
   * the one that stopped the walk included. What happens as a message arrives concerns the
   * recent end of a conversation, so its cost must not grow with the whole history.
   */
  newestFirst(peer: string, goOn: (message: Message) => boolean): Promise<Message[]> {
    const cursor = this.#store('messages').index('byPeer').openCursor(peerRange(peer), 'prev');
    return new Promise<Message[]>((resolve, reject) => {
      const visited: Message[] = [];
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (at === null) return resolve(visited);
        const message = at.value as Message;
        visited.push(message);
        if (goOn(message)) at.continue();
        else resolve(visited);
      };
      cursor.onerror = () => reject(cursor.error ?? new Error('IndexedDB cursor failed'));
    });
  }
  /** Our messages the relay stored but has not reported delivered. */
  async undelivered(): Promise<Message[]> {
    const stored = (await request(this.#store('messages').index('byStatus').getAll('stored'))) as Message[];
    return stored.filter((m) => m.direction === 'out' && m.serverId !== null);
  }

  async outbox(): Promise<OutboxEntry[]> {
    return (await request(this.#store('outbox').getAll())) as OutboxEntry[];
  }
  async outboxEntry(clientId: string): Promise<OutboxEntry | null> {
    const index = this.#store('outbox').index('byClientId');
    return ((await request(index.get(clientId))) as OutboxEntry | undefined) ?? null;
  }
  async putOutbox(entry: OutboxEntry): Promise<void> {
    await request(this.#store('outbox').put(entry));
  }
  async deleteOutbox(clientId: string): Promise<void> {
    const entry = await this.outboxEntry(clientId);
    if (entry?.seq !== undefined) await request(this.#store('outbox').delete(entry.seq));
  }
}

/** Every message of `peer` in the `byPeer` index. */
function peerRange(peer: string): IDBKeyRange {
  return IDBKeyRange.bound([peer, 0], [peer, Number.MAX_SAFE_INTEGER]);
}

const ALL_STORES = [
  'meta',
  'signedPrekeys',
  'oneTimePrekeys',
  'sessions',
  'contacts',
  'conversations',
  'messages',
  'outbox',
] as const;

export type StoreName = (typeof ALL_STORES)[number];

/** The client's database. */
export class Store {
  readonly #db: Db;

  private constructor(db: Db) {
    this.#db = db;
  }

  static async open(name: string = DB_NAME): Promise<Store> {
    return new Store(await Db.open(name, migrations));
  }

  /** Deletes everything this browser keeps for Sotto. */
  static async destroy(name: string = DB_NAME): Promise<void> {
    await Db.delete(name);
  }

  close(): void {
    this.#db.close();
  }

  /** Reads in one transaction. */
  read<T>(stores: readonly StoreName[], work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#db.tx(stores, 'readonly', (raw) => work(new Tx(raw)));
  }

  /** Writes in one transaction: all of it is kept, or none. */
  write<T>(stores: readonly StoreName[], work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#db.tx(stores, 'readwrite', (raw) => work(new Tx(raw)));
  }

  /** Every store, for operations that touch many. */
  static readonly ALL: readonly StoreName[] = ALL_STORES;
}
