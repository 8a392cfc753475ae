/**
 * The relay's Socket.IO events and payloads (docs/PROTOCOL.md Part 2, §12–§17) as types, and
 * checks for what the relay pushes.
 *
 * Requests are built by this client, so their types are enough. Answers and pushes come off
 * the network: each is checked here before anything reads it, so a relay that sends something
 * unexpected produces a `RelayError` with code `unexpected`, never a `TypeError` deep in the
 * app.
 */

import type { EnvelopeJson, OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson } from '../protocol/wire.js';

// ---- event names (§13–§16) ----------------------------------------------------------------------

export const AUTH_CHALLENGE = 'auth:challenge';
export const AUTH_LOGIN = 'auth:login';
export const REGISTER_KEY = 'user:register-key';
export const REQUEST_KEY = 'user:request-key';
/** Not in PROTOCOL.md §14 but served by the relay: a user's identity, no prekey consumed. */
export const IDENTITY = 'user:identity';
export const MESSAGE_SEND = 'message:send';
export const MESSAGE_ACK = 'message:ack';
export const MESSAGE_STATUS = 'message:status';
export const MESSAGE_RECEIVE = 'message:receive';
export const MESSAGE_DELIVERED = 'message:delivered';
export const USER_JOINED = 'user:joined';
export const USER_LEFT = 'user:left';
export const PREKEYS_LOW = 'prekeys:low';

// ---- requests ---------------------------------------------------------------------------------

/** `user:register-key` before login: claims a user id. */
export interface RegisterRequest {
  readonly userId: string;
  readonly identity: PublicIdentityJson;
  readonly signedPrekey: SignedPrekeyJson;
  readonly oneTimePrekeys: readonly OneTimePrekeyJson[];
  readonly signature: string;
}

/** `user:register-key` after login: uploads prekeys. */
export interface UploadRequest {
  readonly signedPrekey?: SignedPrekeyJson;
  readonly oneTimePrekeys: readonly OneTimePrekeyJson[];
}

/** `message:send`. */
export interface SendRequest {
  readonly to: string;
  readonly id: string;
  readonly envelope: EnvelopeJson;
}

// ---- answers ----------------------------------------------------------------------------------

/** `auth:challenge` answer. */
export interface ChallengeAnswer {
  readonly nonce: string;
  readonly host: string;
  readonly expiresAt: number;
}

/** `auth:login` and registration answer. */
export interface LoginAnswer {
  readonly userId: string;
  readonly queued: number;
  readonly oneTimePrekeys: number;
  /** The lowest one-time prekey id the relay holds: every lower one was handed out. Null when it holds none, and from relays older than the field. */
  readonly oneTimePrekeysFrom: number | null;
}

/** Prekey upload answer. */
export interface UploadAnswer {
  /** One-time prekeys the relay now holds. */
  readonly oneTimePrekeys: number;
  /** The lowest id among them: every lower one was handed out. Null when none, and from relays older than the field. */
  readonly oneTimePrekeysFrom: number | null;
  /** How many of the upload's one-time prekeys, from its start, were kept (the rest were over the cap); null from relays older than the field. */
  readonly oneTimePrekeysKept: number | null;
}

/** `message:send` answer. */
export interface SendAnswer {
  /** The relay's id for the message. */
  readonly id: number;
  /** A resend of something already stored. */
  readonly duplicate: boolean;
}

/** One entry of the `message:status` answer. */
export interface StatusEntry {
  readonly id: number;
  readonly status: 'pending' | 'delivered' | 'unknown';
}

// ---- pushes -----------------------------------------------------------------------------------

/** One message of a `message:receive` push. The envelope is still unchecked JSON. */
export interface ReceivedMessage {
  readonly id: number;
  readonly from: string;
  readonly receivedAt: number;
  readonly envelope: unknown;
}

/** One receipt of a `message:delivered` push. */
export interface DeliveryReceipt {
  readonly id: number;
  readonly clientId: string;
  readonly to: string;
}

// ---- checks -----------------------------------------------------------------------------------

export type Fields = { readonly [key: string]: unknown };

export function isObject(value: unknown): value is Fields {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value);
}

function isString(value: unknown): value is string {
  return typeof value === 'string';
}

/** The answer fields of a challenge, or `null`. */
export function asChallenge(value: Fields): ChallengeAnswer | null {
  const { nonce, host, expiresAt } = value;
  return isString(nonce) && isString(host) && isInt(expiresAt) ? { nonce, host, expiresAt } : null;
}

export function asLogin(value: Fields): LoginAnswer | null {
  const { userId, queued, oneTimePrekeys } = value;
  const oneTimePrekeysFrom = optionalInt(value['oneTimePrekeysFrom']);
  return isString(userId) && isInt(queued) && isInt(oneTimePrekeys) && oneTimePrekeysFrom !== undefined
    ? { userId, queued, oneTimePrekeys, oneTimePrekeysFrom }
    : null;
}

export function asSend(value: Fields): SendAnswer | null {
  const { id, duplicate } = value;
  return isInt(id) && typeof duplicate === 'boolean' ? { id, duplicate } : null;
}

export function asUpload(value: Fields): UploadAnswer | null {
  const { oneTimePrekeys } = value;
  const oneTimePrekeysFrom = optionalInt(value['oneTimePrekeysFrom']);
  const oneTimePrekeysKept = optionalInt(value['oneTimePrekeysKept']);
  return isInt(oneTimePrekeys) && oneTimePrekeysFrom !== undefined && oneTimePrekeysKept !== undefined && (oneTimePrekeysKept ?? 0) >= 0
    ? { oneTimePrekeys, oneTimePrekeysFrom, oneTimePrekeysKept }
    : null;
}

/**
 * Which one-time prekeys an answer says the relay holds: none (a count of zero, whatever the
 * id), those from an id on, or unknown (a relay older than `oneTimePrekeysFrom`: not "none").
 */
export function prekeysHeld(answer: { readonly oneTimePrekeys: number; readonly oneTimePrekeysFrom: number | null }): 'none' | 'unknown' | { readonly from: number } {
  if (answer.oneTimePrekeys === 0) return 'none';
  return answer.oneTimePrekeysFrom === null ? 'unknown' : { from: answer.oneTimePrekeysFrom };
}

/** An integer field that may be absent (null); undefined when it is there but not one. */
function optionalInt(value: unknown): number | null | undefined {
  if (value === undefined || value === null) return null;
  return isInt(value) ? value : undefined;
}

export function asStatuses(value: Fields): StatusEntry[] | null {
  const list = value['statuses'];
  if (!Array.isArray(list)) return null;
  const out: StatusEntry[] = [];
  for (const entry of list as unknown[]) {
    if (!isObject(entry) || !isInt(entry['id'])) return null;
    const status = entry['status'];
    if (status !== 'pending' && status !== 'delivered' && status !== 'unknown') return null;
    out.push({ id: entry['id'], status });
  }
  return out;
}

/** A `message:receive` push's messages; malformed entries are dropped (they cannot be acked). */
export function asReceivedMessages(value: unknown): ReceivedMessage[] {
  if (!isObject(value) || !Array.isArray(value['messages'])) return [];
  const out: ReceivedMessage[] = [];
  for (const m of value['messages'] as unknown[]) {
    if (isObject(m) && isInt(m['id']) && isString(m['from']) && isInt(m['receivedAt']) && 'envelope' in m) {
      out.push({ id: m['id'], from: m['from'], receivedAt: m['receivedAt'], envelope: m['envelope'] });
    }
  }
  return out;
}

export function asReceipts(value: unknown): DeliveryReceipt[] {
  if (!isObject(value) || !Array.isArray(value['receipts'])) return [];
  const out: DeliveryReceipt[] = [];
  for (const r of value['receipts'] as unknown[]) {
    if (isObject(r) && isInt(r['id']) && isString(r['clientId']) && isString(r['to'])) {
      out.push({ id: r['id'], clientId: r['clientId'], to: r['to'] });
    }
  }
  return out;
}

export function asPresence(value: unknown): string | null {
  return isObject(value) && isString(value['userId']) ? value['userId'] : null;
}

export function asRemaining(value: unknown): number | null {
  return isObject(value) && isInt(value['remaining']) ? value['remaining'] : null;
}
