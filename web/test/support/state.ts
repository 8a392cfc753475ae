/**
 * A structural serialisation of protocol state for comparisons: bytes as hex, CryptoKeys by
 * identity (each distinct key object gets a number), bigints as strings, key order kept. Two
 * snapshots are equal exactly when nothing in the state changed, including in place.
 */

import { toHex } from '../../src/protocol/bytes.js';

const keyIds = new WeakMap<CryptoKey, number>();
let nextKeyId = 1;

function keyId(key: CryptoKey): number {
  let id = keyIds.get(key);
  if (id === undefined) {
    id = nextKeyId++;
    keyIds.set(key, id);
  }
  return id;
}

function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return `bytes:${toHex(value)}`;
  if (value instanceof CryptoKey) return `key#${keyId(value)}:${value.type}:${value.algorithm.name}:${value.usages.join(',')}`;
  if (typeof value === 'bigint') return `bigint:${value}`;
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'object' && value !== null) {
    const out: { [key: string]: unknown } = {};
    for (const [key, field] of Object.entries(value)) out[key] = plain(field);
    return out;
  }
  return value;
}

/** The snapshot text. */
export function snapshot(value: unknown): string {
  return JSON.stringify(plain(value));
}
