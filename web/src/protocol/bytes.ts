/**
 * Byte helpers (PROTOCOL.md §2): strict hex and base64url codecs, concatenation, big-endian
 * integers and a constant-time comparison.
 *
 * Every decoder here is strict, because a lenient one lets two different texts mean the same
 * bytes, and the Rust core refuses what these refuse: base64url without padding, no whitespace,
 * no standard-alphabet characters, no non-zero trailing bits; hex in lower case only.
 */

import { ProtocolError } from './errors.js';

/**
 * A byte string backed by a plain `ArrayBuffer`: what Web Crypto accepts as a `BufferSource`
 * (TypeScript 5.7+ tells `ArrayBuffer` from `SharedArrayBuffer` apart).
 */
export type Bytes = Uint8Array<ArrayBuffer>;

/** Largest integer a JavaScript number holds exactly (2^53 − 1). */
export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;
/** Largest `u32`. */
export const MAX_U32 = 0xffff_ffff;
/** Largest `u64`. */
export const MAX_U64 = (1n << 64n) - 1n;

/** A copy of `bytes` in a fresh buffer (so wiping the copy cannot touch the original). */
export function copyBytes(bytes: Uint8Array): Bytes {
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

/** `a ‖ b ‖ …` in a fresh buffer. */
export function concatBytes(...parts: readonly Uint8Array[]): Bytes {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * Whether two byte strings are equal, in time that depends only on their lengths (lengths are
 * public everywhere this is used: keys, digests, QR payloads).
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let i = 0; i < a.length; i++) {
    difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
  }
  return difference === 0;
}

/** Whether every byte is zero, in constant time. */
export function isAllZero(bytes: Uint8Array): boolean {
  let accumulated = 0;
  for (let i = 0; i < bytes.length; i++) accumulated |= bytes[i] ?? 0;
  return accumulated === 0;
}

/** Overwrites secret temporaries. JavaScript promises nothing about copies the engine made. */
export function wipe(...buffers: readonly (Uint8Array | null | undefined)[]): void {
  for (const buffer of buffers) buffer?.fill(0);
}

// ---- integers ---------------------------------------------------------------------------------

/** `u8`, checked. */
export function u8(value: number): Bytes {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) {
    throw new ProtocolError('OutOfRange', 'not a u8');
  }
  return Uint8Array.of(value);
}

/** `u16` big-endian, checked. */
export function u16be(value: number): Bytes {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new ProtocolError('OutOfRange', 'not a u16');
  }
  return Uint8Array.of(value >>> 8, value & 0xff);
}

/** `u32` big-endian, checked. */
export function u32be(value: number): Bytes {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw new ProtocolError('OutOfRange', 'not a u32');
  }
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

/** `u64` big-endian, checked. Takes a bigint, or a number that is a safe integer. */
export function u64be(value: bigint | number): Bytes {
  const big = typeof value === 'number' ? safeIntegerToBigInt(value) : value;
  if (big < 0n || big > MAX_U64) {
    throw new ProtocolError('OutOfRange', 'not a u64');
  }
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, big);
  return out;
}

function safeIntegerToBigInt(value: number): bigint {
  if (!Number.isSafeInteger(value)) {
    throw new ProtocolError('OutOfRange', 'not a safe integer');
  }
  return BigInt(value);
}

/** Reads a big-endian `u32` at `offset` (the caller checked the length). */
export function readU32be(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset);
}

/** Reads a big-endian `u64` at `offset` (the caller checked the length). */
export function readU64be(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset);
}

// ---- hex --------------------------------------------------------------------------------------

const HEX_DIGITS = '0123456789abcdef';

/** Lower-case hex. */
export function toHex(bytes: Uint8Array): string {
  let out = '';
  for (const byte of bytes) {
    out += (HEX_DIGITS[byte >>> 4] ?? '') + (HEX_DIGITS[byte & 0x0f] ?? '');
  }
  return out;
}

/** Decodes lower-case hex of even length; anything else is `InvalidHex`. */
export function fromHex(text: string): Bytes {
  if (text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) {
    throw new ProtocolError('InvalidHex', 'not lower-case hex');
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

// ---- base64url --------------------------------------------------------------------------------

const BASE64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Value of each base64url character by char code, or -1. */
const BASE64URL_VALUES: readonly number[] = (() => {
  const values = new Array<number>(128).fill(-1);
  for (let i = 0; i < BASE64URL_ALPHABET.length; i++) {
    values[BASE64URL_ALPHABET.charCodeAt(i)] = i;
  }
  return values;
})();

/** Base64url without padding (RFC 4648 §5). */
export function toBase64Url(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = ((bytes[i] ?? 0) << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += char(n >>> 18) + char(n >>> 12) + char(n >>> 6) + char(n);
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = (bytes[i] ?? 0) << 16;
    out += char(n >>> 18) + char(n >>> 12);
  } else if (rest === 2) {
    const n = ((bytes[i] ?? 0) << 16) | ((bytes[i + 1] ?? 0) << 8);
    out += char(n >>> 18) + char(n >>> 12) + char(n >>> 6);
  }
  return out;
}

function char(sextet: number): string {
  return BASE64URL_ALPHABET[sextet & 0x3f] ?? '';
}

/**
 * Decodes canonical unpadded base64url: only the URL-safe alphabet, no `=`, no whitespace, a
 * length that is not 1 mod 4, and zero bits in the unused tail of the last character (so every
 * byte string has exactly one encoding). Anything else is `InvalidBase64`.
 */
export function fromBase64Url(text: string, field?: string): Bytes {
  const fail = (): never => {
    throw new ProtocolError('InvalidBase64', 'not canonical unpadded base64url', field);
  };
  if (text.length % 4 === 1) fail();
  const sextets = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const value = code < 128 ? (BASE64URL_VALUES[code] ?? -1) : -1;
    if (value < 0) fail();
    sextets[i] = value;
  }
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let o = 0;
  let i = 0;
  for (; i + 4 <= sextets.length; i += 4) {
    const n =
      ((sextets[i] ?? 0) << 18) |
      ((sextets[i + 1] ?? 0) << 12) |
      ((sextets[i + 2] ?? 0) << 6) |
      (sextets[i + 3] ?? 0);
    out[o++] = n >>> 16;
    out[o++] = (n >>> 8) & 0xff;
    out[o++] = n & 0xff;
  }
  const rest = sextets.length - i;
  if (rest === 2) {
    const last = sextets[i + 1] ?? 0;
    if ((last & 0x0f) !== 0) fail();
    out[o++] = ((sextets[i] ?? 0) << 2) | (last >>> 4);
  } else if (rest === 3) {
    const last = sextets[i + 2] ?? 0;
    if ((last & 0x03) !== 0) fail();
    const n = ((sextets[i] ?? 0) << 18) | ((sextets[i + 1] ?? 0) << 12) | (last << 6);
    out[o++] = n >>> 16;
    out[o++] = (n >>> 8) & 0xff;
  }
  return out;
}

/** Decodes base64url and requires exactly `length` bytes (`InvalidLength` otherwise). */
export function fromBase64UrlExact(text: string, length: number, field?: string): Bytes {
  const bytes = fromBase64Url(text, field);
  if (bytes.length !== length) {
    throw new ProtocolError('InvalidLength', `expected ${length} bytes, got ${bytes.length}`, field);
  }
  return bytes;
}
