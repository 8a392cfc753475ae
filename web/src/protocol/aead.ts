/**
 * AES-256-GCM with a message key's material (PROTOCOL.md §6.1): the output is ciphertext ‖
 * 16-byte tag. The AES key is imported non-extractable for the one operation it serves.
 */

import type { Bytes } from './bytes.js';
import { ProtocolError } from './errors.js';
import type { MessageKeyMaterial } from './kdf.js';

/** Length of the GCM tag appended to every ciphertext. */
export const TAG_LENGTH = 16;

async function importAesKey(material: MessageKeyMaterial, usage: 'encrypt' | 'decrypt'): Promise<CryptoKey> {
  return globalThis.crypto.subtle.importKey('raw', material.key, { name: 'AES-GCM' }, false, [usage]);
}

/** Encrypts `plaintext`, authenticating `associatedData`: `ciphertext ‖ tag`. */
export async function seal(material: MessageKeyMaterial, plaintext: Bytes, associatedData: Bytes): Promise<Bytes> {
  const key = await importAesKey(material, 'encrypt');
  const sealed = await globalThis.crypto.subtle.encrypt(
    { name: 'AES-GCM', iv: material.nonce, additionalData: associatedData, tagLength: TAG_LENGTH * 8 },
    key,
    plaintext,
  );
  return new Uint8Array(sealed);
}

/**
 * Decrypts and authenticates `ciphertext ‖ tag`; `DecryptionFailed` when the tag does not verify
 * (wrong key, wrong associated data, altered ciphertext).
 */
export async function open(material: MessageKeyMaterial, ciphertext: Bytes, associatedData: Bytes): Promise<Bytes> {
  const key = await importAesKey(material, 'decrypt');
  try {
    const opened = await globalThis.crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: material.nonce, additionalData: associatedData, tagLength: TAG_LENGTH * 8 },
      key,
      ciphertext,
    );
    return new Uint8Array(opened);
  } catch {
    throw new ProtocolError('DecryptionFailed', 'authentication failed');
  }
}
