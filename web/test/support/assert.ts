/**
 * A tiny assertion helper for the portable test cases: no `node:` imports, so the same cases run
 * under Node's test runner and inside a real browser.
 */

import { isProtocolError } from '../../src/protocol/errors.js';
import { toHex } from '../../src/protocol/bytes.js';

/** A failed expectation. */
export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AssertionError';
  }
}

/** Fails unless `condition` holds. */
export function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Fails unless `actual === expected` (strings, numbers, bigints, booleans, null). */
export function assertEqual(
  actual: unknown,
  expected: string | number | bigint | boolean | null | undefined,
  what: string,
): void {
  if (actual !== expected) {
    throw new AssertionError(`${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
}

/** Fails unless two byte strings are equal; `expected` may be given as lower-case hex. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array | string, what: string): void {
  const want = typeof expected === 'string' ? expected : toHex(expected);
  const got = toHex(actual);
  if (got !== want) throw new AssertionError(`${what}: expected ${abbreviate(want)}, got ${abbreviate(got)}`);
}

/** Fails unless `operation` rejects (or throws) a ProtocolError with `code`. */
export async function assertRejects(operation: () => unknown, code: string, what: string): Promise<void> {
  try {
    await operation();
  } catch (error) {
    if (isProtocolError(error) && error.code === code) return;
    const got = isProtocolError(error) ? error.code : String(error);
    throw new AssertionError(`${what}: expected error ${code}, got ${got}`);
  }
  throw new AssertionError(`${what}: expected error ${code}, but it succeeded`);
}

function show(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(abbreviate(value)) : String(value);
}

function abbreviate(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}… (${text.length} chars)` : text;
}
