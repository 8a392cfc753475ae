/**
 * The key derivations of X3DH and the Double Ratchet (PROTOCOL.md §5, §6.1), on Web Crypto's
 * HKDF and HMAC.
 *
 *     SK          = HKDF(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = X3DH_INFO, 32)
 *     KDF_RK      : HKDF(salt = RK, ikm = DH out, info = ROOT_INFO, 64) → RK' ‖ CK
 *     KDF_CK      : MK = HMAC(CK, 0x01), CK' = HMAC(CK, 0x02)
 *     message keys: HKDF(salt = 0^32, ikm = MK, info = MESSAGE_KEY_INFO, 44) → key ‖ nonce
 *
 * Root, chain and message keys are 32-byte `Uint8Array`s, branded by role so one cannot be
 * passed where another belongs: they are persisted with the session anyway (PROTOCOL.md §10), and
 * a root key must be bytes to serve as an HKDF salt. Inputs imported into Web Crypto are
 * imported non-extractable with the one usage they need.
 */

import { type Bytes, concatBytes, wipe } from './bytes.js';
import type { SharedSecret } from './keys.js';

/** HKDF info of the X3DH shared secret. */
export const X3DH_INFO = 'Sotto v1 P-256 X3DH';
/** HKDF info of the root-chain step. */
export const ROOT_INFO = 'Sotto v1 P-256 root chain';
/** HKDF info of the message-key expansion. */
export const MESSAGE_KEY_INFO = 'Sotto v1 P-256 message keys';

/** Length of root, chain and message keys. */
export const KEY_LENGTH = 32;
/** Length of an AES-256-GCM nonce. */
export const NONCE_LENGTH = 12;

declare const rootKeyBrand: unique symbol;
declare const chainKeyBrand: unique symbol;
declare const messageKeyBrand: unique symbol;

/** `RK`: the X3DH secret `SK` to start with, then stepped by every DH ratchet. */
export type RootKey = Bytes & { readonly [rootKeyBrand]: true };
/** `CK`: a sending or receiving chain key. */
export type ChainKey = Bytes & { readonly [chainKeyBrand]: true };
/** `MK`: encrypts exactly one message. */
export type MessageKey = Bytes & { readonly [messageKeyBrand]: true };

/** The AES-256-GCM key and nonce of one message. Wipe both after use. */
export interface MessageKeyMaterial {
  /** AES-256 key, 32 bytes. */
  readonly key: Bytes;
  /** GCM nonce, 12 bytes; unique because every message key is used once. */
  readonly nonce: Bytes;
}

const ZERO_SALT = new Uint8Array(KEY_LENGTH);
const encoder = new TextEncoder();

function subtle(): SubtleCrypto {
  return globalThis.crypto.subtle;
}

async function hkdf(salt: Bytes, ikm: Bytes, info: string, length: number): Promise<Bytes> {
  const key = await subtle().importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  const bits = await subtle().deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt, info: encoder.encode(info) },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

/** `SK` from the X3DH DH outputs, in concatenation order. */
export async function x3dhSharedSecret(dhOutputs: readonly SharedSecret[]): Promise<RootKey> {
  const ikm = concatBytes(...dhOutputs);
  try {
    return (await hkdf(ZERO_SALT, ikm, X3DH_INFO, KEY_LENGTH)) as RootKey;
  } finally {
    wipe(ikm);
  }
}

/** `KDF_RK`: steps the root chain with a DH output. */
export async function kdfRk(rootKey: RootKey, dhOutput: SharedSecret): Promise<{ rootKey: RootKey; chainKey: ChainKey }> {
  const okm = await hkdf(rootKey, dhOutput, ROOT_INFO, 2 * KEY_LENGTH);
  const next = { rootKey: okm.slice(0, KEY_LENGTH) as RootKey, chainKey: okm.slice(KEY_LENGTH) as ChainKey };
  wipe(okm);
  return next;
}

/** `KDF_CK`: the message key for the current position and the next chain key. */
export async function kdfCk(chainKey: ChainKey): Promise<{ messageKey: MessageKey; chainKey: ChainKey }> {
  const key = await subtle().importKey('raw', chainKey, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const [messageKey, nextChainKey] = await Promise.all([
    subtle().sign('HMAC', key, Uint8Array.of(0x01)),
    subtle().sign('HMAC', key, Uint8Array.of(0x02)),
  ]);
  return { messageKey: new Uint8Array(messageKey) as MessageKey, chainKey: new Uint8Array(nextChainKey) as ChainKey };
}

/** Expands a message key into an AES-256 key and a GCM nonce. */
export async function expandMessageKey(messageKey: MessageKey): Promise<MessageKeyMaterial> {
  const okm = await hkdf(ZERO_SALT, messageKey, MESSAGE_KEY_INFO, KEY_LENGTH + NONCE_LENGTH);
  const material = { key: okm.slice(0, KEY_LENGTH), nonce: okm.slice(KEY_LENGTH) };
  wipe(okm);
  return material;
}
