/**
 * The app's errors: a stable `code` for every failure a person may see, and the sentence the
 * UI shows for it.
 *
 * Relay refusals keep the relay's code (`unknown_user`, `rate_limited`, …); protocol failures
 * keep the protocol's; the rest are the app's own. Sentences never contain key material or
 * message text.
 */

import { isProtocolError } from '../protocol/errors.js';
import { isRelayError, RELAY_ERROR_CODES, RelayError, type RelayErrorCode } from '../transport/relay.js';

export const APP_ERROR_CODES = [
  'not_registered', // no identity in this browser
  'key_changed', // the contact's identity changed and the user has not accepted it
  'key_changed_again', // accepting a new key that is no longer the pending one (it changed again)
  'to_self', // a message to oneself
  'empty', // an empty message
  'message_too_large', // a text longer than one record can hold
  'invalid_user_id', // not a valid user id (§3)
  'storage', // IndexedDB failed (private mode, quota, another tab upgraded)
  'unsupported_browser', // no Web Crypto P-256 or no IndexedDB
] as const;

export type AppErrorCode = (typeof APP_ERROR_CODES)[number];

export class AppError extends Error {
  readonly code: AppErrorCode;

  constructor(code: AppErrorCode, message?: string) {
    super(message ?? code);
    this.name = 'AppError';
    this.code = code;
  }
}

export function isAppError(error: unknown, code?: AppErrorCode): error is AppError {
  return error instanceof AppError && (code === undefined || error.code === code);
}

/** A stable code for any error: the app's, the relay's or the protocol's. */
export function errorCode(error: unknown): string {
  if (isAppError(error) || isRelayError(error) || isProtocolError(error)) return error.code;
  return 'internal';
}

/**
 * What to tell a person whose registration failed. The relay limits registrations per network
 * address, and nothing retries a registration by itself.
 */
export function explainRegistration(error: unknown): string {
  if (isRelayError(error) && error.code === 'rate_limited') {
    const minutes = Math.max(1, Math.ceil((error.retryAfterMs ?? 60_000) / 60_000));
    return `Too many user ids were registered from your network recently. Try again in about ${minutes} min.`;
  }
  return explain(error);
}

/** What to tell a person about `error`. `peer` names the other party where it helps. */
export function explain(error: unknown, peer?: string): string {
  const who = peer ?? 'that user';
  if (isRelayError(error)) {
    switch (error.code) {
      case 'unknown_user':
        return `There is no user “${who}” on this relay. Check the spelling.`;
      case 'user_taken':
        return 'That user id is taken. Choose another one.';
      case 'invalid_user_id':
        return 'A user id has 2 to 32 characters: a–z, 0–9, “.”, “_” or “-”, starting with a letter or digit.';
      case 'too_large':
        return 'That message is too large to send.';
      case 'rate_limited': {
        const seconds = Math.max(1, Math.ceil((error.retryAfterMs ?? 1000) / 1000));
        return `You are sending too fast. Sotto will retry in about ${seconds} s.`;
      }
      case 'queue_full':
        return `${who} has too many undelivered messages. Try again once they have been online.`;
      case 'too_many_connections':
        return 'This user id has too many windows or devices connected to the relay. Close one; Sotto keeps retrying.';
      case 'authentication_failed':
        return 'The relay no longer recognises the identity kept in this browser (was the user id released?).';
      case 'busy':
      case 'storage_unavailable':
        return 'The relay is busy. Sotto will retry shortly.';
      case 'timeout':
      case 'disconnected':
        return 'The relay cannot be reached right now. Sotto will retry when it is back.';
      default:
        return `The relay refused the request (${error.code}).`;
    }
  }
  if (isAppError(error)) {
    switch (error.code) {
      case 'key_changed':
        return `${who}’s safety number has changed. Sending is blocked until you accept the new key.`;
      case 'key_changed_again':
        return `${who}’s safety number changed again before you accepted it. Compare the new one, then accept it.`;
      case 'to_self':
        return 'You cannot message yourself.';
      case 'empty':
        return 'Type a message first.';
      case 'message_too_large':
        return 'That message is too large to send (at most about 32 KB of text).';
      case 'invalid_user_id':
        return 'A user id has 2 to 32 characters: a–z, 0–9, “.”, “_” or “-”, starting with a letter or digit.';
      case 'not_registered':
        return 'There is no identity in this browser yet.';
      case 'storage':
        return 'This browser refused to store Sotto’s data (private window or full disk?).';
      case 'unsupported_browser':
        return 'This browser lacks Web Crypto P-256 or IndexedDB, which Sotto needs.';
    }
  }
  if (isProtocolError(error, 'InvalidUserId')) {
    return 'A user id has 2 to 32 characters: a–z, 0–9, “.”, “_” or “-”, starting with a letter or digit.';
  }
  if (isProtocolError(error)) return `A protocol check failed (${error.code}).`;
  return 'Something went wrong. Reload the page to try again.';
}

/** {@link explain} for a stored error code (a message that failed to send keeps only its code). */
export function explainCode(code: string, peer?: string): string {
  if ((RELAY_ERROR_CODES as readonly string[]).includes(code)) {
    return explain(new RelayError(code as RelayErrorCode, code, false), peer);
  }
  if ((APP_ERROR_CODES as readonly string[]).includes(code)) return explain(new AppError(code as AppErrorCode), peer);
  return `It could not be sent (${code}).`;
}
