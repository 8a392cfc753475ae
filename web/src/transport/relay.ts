/**
 * A connection to the relay (docs/PROTOCOL.md Part 2) over socket.io-client: typed requests
 * with acknowledgement timeouts, the login challenge signed with the identity key, and the
 * relay's pushes handed to whoever listens.
 *
 * Every request is one JSON object sent with an acknowledgement; every answer is checked (see
 * `events.ts`) and a refusal becomes a {@link RelayError} whose `code` is the relay's stable
 * code, or one of ours for what the relay cannot say (`timeout`, `disconnected`,
 * `unexpected`). The same module runs in the browser and under Node (the wire tests), so it
 * takes the host to sign from its caller instead of reading `location`.
 *
 * Reconnection is socket.io-client's own: exponential backoff from 1 s to 30 s with ±50 %
 * jitter, so a relay that restarts is not met by every client at the same instant.
 */

import { io, type Socket } from 'socket.io-client';

import { fromBase64Url, toBase64Url } from '../protocol/bytes.js';
import type { IdentityKeyPair } from '../protocol/identity.js';
import { sign } from '../protocol/keys.js';
import { authenticationMessage } from '../protocol/signing.js';
import type { UserId } from '../protocol/userId.js';
import type { OneTimePrekeyJson, SignedPrekeyJson } from '../protocol/wire.js';
import { publicIdentityToJson } from '../protocol/wire.js';
import * as ev from './events.js';

/** The relay's refusal codes (§12), and ours for failures the relay cannot report. */
export const RELAY_ERROR_CODES = [
  'bad_request',
  'unauthenticated',
  'already_authenticated',
  'invalid_user_id',
  'user_taken',
  'unknown_user',
  'no_challenge',
  'challenge_expired',
  'authentication_failed',
  'invalid_keys',
  'too_many_prekeys',
  'too_large',
  'rate_limited',
  'queue_full',
  'too_many_connections',
  'busy',
  'storage_unavailable',
  // Ours:
  'timeout', // no answer within the timeout; the request may or may not have been done
  'disconnected', // the connection is not open
  'unexpected', // an answer this client does not understand
] as const;

export type RelayErrorCode = (typeof RELAY_ERROR_CODES)[number];

/** A failed relay request. Branch on `code`; `message` is the relay's text, for logs only. */
export class RelayError extends Error {
  readonly code: RelayErrorCode;
  /** Whether the same request may succeed later. */
  readonly retryable: boolean;
  /** For `rate_limited`: how long to wait. */
  readonly retryAfterMs: number | null;

  constructor(code: RelayErrorCode, message: string, retryable: boolean, retryAfterMs: number | null = null) {
    super(`${code}: ${message}`);
    this.name = 'RelayError';
    this.code = code;
    this.retryable = retryable;
    this.retryAfterMs = retryAfterMs;
  }
}

export function isRelayError(error: unknown, code?: RelayErrorCode): error is RelayError {
  return error instanceof RelayError && (code === undefined || error.code === code);
}

function unexpected(what: string): RelayError {
  return new RelayError('unexpected', what, false);
}

/** What the relay pushes, by event. */
export interface RelayPushes {
  messages(messages: ev.ReceivedMessage[]): void;
  delivered(receipts: ev.DeliveryReceipt[]): void;
  presence(userId: string, online: boolean): void;
  prekeysLow(remaining: number): void;
}

export interface RelayOptions {
  /** The relay's origin, e.g. `http://127.0.0.1:3000` (the browser passes `location.origin`). */
  readonly url: string;
  /** `host[:port]` as connected to: login signatures are bound to it (§13). */
  readonly host: string;
  /** Transports in order of preference. Default: WebSocket, then long-polling. */
  readonly transports?: readonly ('websocket' | 'polling')[];
  /** How long to wait for an answer. Default 10 s. */
  readonly timeoutMs?: number;
  /** Reconnect after a drop. Default true. */
  readonly reconnect?: boolean;
}

/** A Socket.IO connection to the relay. Not logged in until {@link login} or {@link register}. */
export class RelayConnection {
  readonly socket: Socket;
  readonly host: string;
  readonly #timeoutMs: number;

  constructor(options: RelayOptions) {
    this.host = options.host;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.socket = io(options.url, {
      autoConnect: false,
      transports: [...(options.transports ?? ['websocket', 'polling'])],
      // Fall back to long-polling when a proxy blocks WebSocket.
      tryAllTransports: true,
      reconnection: options.reconnect ?? true,
      reconnectionDelay: 1_000,
      reconnectionDelayMax: 30_000,
      randomizationFactor: 0.5,
      timeout: 10_000,
    });
  }

  /** Starts connecting (and reconnecting after drops). */
  open(): void {
    this.socket.connect();
  }

  /** Closes the connection for good (no reconnection). */
  close(): void {
    this.socket.disconnect();
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /** Registers handlers for the relay's pushes. Payloads are checked first. */
  onPushes(handlers: RelayPushes): void {
    this.socket.on(ev.MESSAGE_RECEIVE, (payload: unknown) => {
      const messages = ev.asReceivedMessages(payload);
      if (messages.length > 0) handlers.messages(messages);
    });
    this.socket.on(ev.MESSAGE_DELIVERED, (payload: unknown) => {
      const receipts = ev.asReceipts(payload);
      if (receipts.length > 0) handlers.delivered(receipts);
    });
    this.socket.on(ev.USER_JOINED, (payload: unknown) => {
      const user = ev.asPresence(payload);
      if (user !== null) handlers.presence(user, true);
    });
    this.socket.on(ev.USER_LEFT, (payload: unknown) => {
      const user = ev.asPresence(payload);
      if (user !== null) handlers.presence(user, false);
    });
    this.socket.on(ev.PREKEYS_LOW, (payload: unknown) => {
      const remaining = ev.asRemaining(payload);
      if (remaining !== null) handlers.prekeysLow(remaining);
    });
  }

  /**
   * Sends any request and returns the fields of an `ok` answer. Exposed for tests that send
   * malformed payloads; the app uses the typed calls below.
   */
  async request(event: string, payload: unknown): Promise<ev.Fields> {
    if (!this.socket.connected) throw new RelayError('disconnected', 'not connected to the relay', true);
    let answer: unknown;
    try {
      answer = await this.socket.timeout(this.#timeoutMs).emitWithAck(event, payload);
    } catch {
      // socket.io-client rejects on timeout, and on disconnection while waiting.
      if (!this.socket.connected) throw new RelayError('disconnected', 'the connection dropped', true);
      throw new RelayError('timeout', `no answer to ${event}`, true);
    }
    if (!ev.isObject(answer)) throw unexpected(`answer to ${event} is not an object`);
    if (answer['ok'] === true) return answer;
    if (answer['ok'] === false && typeof answer['error'] === 'string') {
      const code = (RELAY_ERROR_CODES as readonly string[]).includes(answer['error'])
        ? (answer['error'] as RelayErrorCode)
        : 'unexpected';
      const message = typeof answer['message'] === 'string' ? answer['message'] : code;
      const retryAfter = answer['retryAfterMs'];
      return Promise.reject(
        new RelayError(code, message, answer['retryable'] === true, typeof retryAfter === 'number' ? retryAfter : null),
      );
    }
    throw unexpected(`answer to ${event} has no ok field`);
  }

  /** Asks for a login challenge and signs it for `user` (§4.1, §13). */
  async #signedChallenge(user: UserId, identity: IdentityKeyPair): Promise<string> {
    const challenge = ev.asChallenge(await this.request(ev.AUTH_CHALLENGE, {}));
    if (challenge === null) throw unexpected('malformed challenge');
    let nonce: Uint8Array;
    try {
      nonce = fromBase64Url(challenge.nonce);
    } catch {
      throw unexpected('challenge nonce is not base64url');
    }
    // Signed over the host we connected to, not the one the relay reports: a relay cannot
    // make us sign for another relay.
    const message = authenticationMessage(this.host, user, nonce);
    return toBase64Url(await sign(identity.signing.privateKey, message));
  }

  /** Logs in as `user`. */
  async login(user: UserId, identity: IdentityKeyPair): Promise<ev.LoginAnswer> {
    const signature = await this.#signedChallenge(user, identity);
    const answer = ev.asLogin(await this.request(ev.AUTH_LOGIN, { userId: user, signature }));
    if (answer === null) throw unexpected('malformed login answer');
    return answer;
  }

  /** Claims `user` with this identity and prekeys; the connection is then logged in. */
  async register(
    user: UserId,
    identity: IdentityKeyPair,
    signedPrekey: SignedPrekeyJson,
    oneTimePrekeys: readonly OneTimePrekeyJson[],
  ): Promise<ev.LoginAnswer> {
    const signature = await this.#signedChallenge(user, identity);
    const request: ev.RegisterRequest = {
      userId: user,
      identity: publicIdentityToJson(identity.publicIdentity),
      signedPrekey,
      oneTimePrekeys,
      signature,
    };
    const answer = ev.asLogin(await this.request(ev.REGISTER_KEY, request));
    if (answer === null) throw unexpected('malformed registration answer');
    return answer;
  }

  /** Uploads prekeys. */
  async uploadPrekeys(signedPrekey: SignedPrekeyJson | null, oneTimePrekeys: readonly OneTimePrekeyJson[]): Promise<ev.UploadAnswer> {
    const request: ev.UploadRequest = signedPrekey === null ? { oneTimePrekeys } : { signedPrekey, oneTimePrekeys };
    const answer = ev.asUpload(await this.request(ev.REGISTER_KEY, request));
    if (answer === null) throw unexpected('malformed upload answer');
    return answer;
  }

  /** A user's bundle, as unchecked JSON (decode it with `decodeBundleJson`). Consumes a one-time prekey. */
  async requestBundle(user: string): Promise<unknown> {
    const answer = await this.request(ev.REQUEST_KEY, { userId: user });
    if (!('bundle' in answer)) throw unexpected('answer without a bundle');
    return answer['bundle'];
  }

  /** A user's identity (§8.1), as unchecked JSON. Consumes nothing. */
  async identity(user: string): Promise<unknown> {
    const answer = await this.request(ev.IDENTITY, { userId: user });
    if (!('identity' in answer)) throw unexpected('answer without an identity');
    return answer['identity'];
  }

  /** Queues a message; resolves once the relay stored it durably. */
  async send(request: ev.SendRequest): Promise<ev.SendAnswer> {
    const answer = ev.asSend(await this.request(ev.MESSAGE_SEND, request));
    if (answer === null) throw unexpected('malformed send answer');
    return answer;
  }

  /** Acknowledges saved messages. */
  async ack(ids: readonly number[]): Promise<void> {
    await this.request(ev.MESSAGE_ACK, { ids });
  }

  /** Where messages we sent stand. */
  async status(ids: readonly number[]): Promise<ev.StatusEntry[]> {
    const statuses = ev.asStatuses(await this.request(ev.MESSAGE_STATUS, { ids }));
    if (statuses === null) throw unexpected('malformed status answer');
    return statuses;
  }
}
