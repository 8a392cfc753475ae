/**
 * P-256 keys on Web Crypto (PROTOCOL.md §2): ECDH key pairs, ECDSA identity signing keys, their
 * encodings and checks.
 *
 * Public keys travel as SEC1 uncompressed points, `0x04 ‖ X ‖ Y` (65 bytes). A value typed
 * {@link DhPublicKey} or {@link SigningPublicKey} has been validated: exactly 65 bytes, prefix
 * `0x04` (checked here, because Web Crypto's `raw` import also accepts compressed points), and
 * on the curve with coordinates below the field prime (checked by Web Crypto's import, which
 * refuses anything else with a `DataError`).
 *
 * Private keys are non-extractable `CryptoKey`s with the narrowest usages: `deriveBits` for
 * ECDH, `sign` for ECDSA. A key pair carries its public key as bytes, because a non-extractable
 * private key cannot give its public half back.
 *
 * ECDH outputs are the 32-byte X coordinate (`deriveBits(…, 256)`) and are refused when all zero
 * (`NonContributoryKey`). Signatures are IEEE P1363 (`r ‖ s`, 64 bytes); high-S values are
 * accepted, as Web Crypto produces them half the time.
 */

import { type Bytes, concatBytes, constantTimeEqual, copyBytes, fromBase64UrlExact, isAllZero, wipe } from './bytes.js';
import { ProtocolError } from './errors.js';

/** Length of an encoded public key: `0x04 ‖ X ‖ Y`. */
export const PUBLIC_KEY_LENGTH = 65;
/** Length of a P1363 ECDSA signature. */
export const SIGNATURE_LENGTH = 64;
/** Length of an ECDH output (the X coordinate). */
export const SHARED_SECRET_LENGTH = 32;

const ECDH: EcKeyImportParams = { name: 'ECDH', namedCurve: 'P-256' };
const ECDSA: EcKeyImportParams = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SHA256: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

declare const dhPublicKeyBrand: unique symbol;
declare const signingPublicKeyBrand: unique symbol;
declare const sharedSecretBrand: unique symbol;

/**
 * A validated P-256 public key for key agreement: identity DH keys, prekeys, base keys, ratchet
 * keys. Treat as immutable.
 */
export type DhPublicKey = Bytes & { readonly [dhPublicKeyBrand]: true };

/** A validated P-256 public key for ECDSA: a user's identity signing key `IKs`. Immutable. */
export type SigningPublicKey = Bytes & { readonly [signingPublicKeyBrand]: true };

/** An ECDH output (32 bytes, not all zero). Wipe it once it has been fed to a KDF. */
export type SharedSecret = Bytes & { readonly [sharedSecretBrand]: true };

/** An ECDH key pair. Structured-clone friendly, so it can be stored in IndexedDB as is. */
export interface DhKeyPair {
  /** Non-extractable ECDH P-256 private key, usages `["deriveBits"]`. */
  readonly privateKey: CryptoKey;
  /** Its public key, 65 bytes. */
  readonly publicKey: DhPublicKey;
}

/** An ECDSA key pair: a device's identity signing key. Structured-clone friendly. */
export interface SigningKeyPair {
  /** Non-extractable ECDSA P-256 private key, usages `["sign"]`. */
  readonly privateKey: CryptoKey;
  /** Its public key, 65 bytes. */
  readonly publicKey: SigningPublicKey;
}

/**
 * Where fresh ECDH key pairs come from: ephemeral keys and ratchet keys. Production code uses
 * {@link generateDhKeyPair}; tests pass a source that replays the keys a test vector names.
 */
export type KeySource = () => Promise<DhKeyPair>;

/** A private key in JWK form, as the test vectors give them. */
export interface EcPrivateJwk {
  readonly kty: string;
  readonly crv: string;
  readonly x: string;
  readonly y: string;
  readonly d: string;
}

function subtle(): SubtleCrypto {
  return globalThis.crypto.subtle;
}

// ---- public keys ------------------------------------------------------------------------------

/** The cheap structural check Web Crypto does not do: 65 bytes starting with `0x04`. */
function checkUncompressed(bytes: Uint8Array): void {
  if (bytes.length !== PUBLIC_KEY_LENGTH || bytes[0] !== 0x04) {
    throw new ProtocolError('InvalidPublicKey', 'not a 65-byte uncompressed P-256 point');
  }
}

async function importPublic(bytes: Uint8Array, algorithm: EcKeyImportParams, usages: KeyUsage[]): Promise<CryptoKey> {
  checkUncompressed(bytes);
  try {
    return await subtle().importKey('raw', copyBytes(bytes), algorithm, true, usages);
  } catch {
    throw new ProtocolError('InvalidPublicKey', 'not a point on P-256');
  }
}

/** Validates an encoded ECDH public key (length, prefix, on the curve). Returns a copy. */
export async function decodeDhPublicKey(bytes: Uint8Array): Promise<DhPublicKey> {
  // ECDH public keys have no usages of their own: they are only an argument to deriveBits.
  await importPublic(bytes, ECDH, []);
  return copyBytes(bytes) as DhPublicKey;
}

/** Validates an encoded ECDSA public key (length, prefix, on the curve). Returns a copy. */
export async function decodeSigningPublicKey(bytes: Uint8Array): Promise<SigningPublicKey> {
  await importPublic(bytes, ECDSA, ['verify']);
  return copyBytes(bytes) as SigningPublicKey;
}

/** Whether two public keys are the same key (public values: no need for constant time). */
export function samePublicKey(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---- checks on CryptoKeys ---------------------------------------------------------------------

/**
 * Checks that a CryptoKey is what it is about to be used as, so a key of the wrong kind (an
 * ECDSA key handed to ECDH, a public key where a private one belongs) fails with a clear code
 * instead of an engine-specific exception, and a key with more usages than needed is noticed.
 */
export function checkPrivateKey(key: CryptoKey, name: 'ECDH' | 'ECDSA', usage: KeyUsage): void {
  const algorithm = key.algorithm as Partial<EcKeyAlgorithm>;
  if (
    key.type !== 'private' ||
    algorithm.name !== name ||
    algorithm.namedCurve !== 'P-256' ||
    key.usages.length !== 1 ||
    key.usages[0] !== usage
  ) {
    throw new ProtocolError('InvalidKey', `expected a P-256 ${name} private key for ${usage} only`);
  }
}

// ---- generation and import of private keys ----------------------------------------------------

async function exportRaw(key: CryptoKey): Promise<Bytes> {
  // Public keys are always extractable in Web Crypto, whatever the private key's setting.
  return new Uint8Array(await subtle().exportKey('raw', key));
}

/** A fresh ECDH key pair with a non-extractable private key. The default {@link KeySource}. */
export async function generateDhKeyPair(): Promise<DhKeyPair> {
  const pair = await subtle().generateKey(ECDH, false, ['deriveBits']);
  return { privateKey: pair.privateKey, publicKey: (await exportRaw(pair.publicKey)) as DhPublicKey };
}

/** A fresh ECDSA key pair with a non-extractable private key. */
export async function generateSigningKeyPair(): Promise<SigningKeyPair> {
  const pair = await subtle().generateKey(ECDSA, false, ['sign']);
  return { privateKey: pair.privateKey, publicKey: (await exportRaw(pair.publicKey)) as SigningPublicKey };
}

/** `0x04 ‖ x ‖ y` from a JWK, validated as a point. */
function jwkPublicBytes(jwk: EcPrivateJwk): Bytes {
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256') {
    throw new ProtocolError('InvalidPrivateKey', 'not a P-256 EC JWK');
  }
  try {
    return concatBytes(Uint8Array.of(0x04), fromBase64UrlExact(jwk.x, 32), fromBase64UrlExact(jwk.y, 32));
  } catch {
    throw new ProtocolError('InvalidPrivateKey', 'JWK coordinates are not 32-byte base64url');
  }
}

async function importPrivateJwk(jwk: EcPrivateJwk, algorithm: EcKeyImportParams, usage: KeyUsage): Promise<CryptoKey> {
  try {
    // Only the members Web Crypto needs: an `ext` or `key_ops` in the input cannot widen what
    // the imported key may do.
    const clean: JsonWebKey = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d };
    return await subtle().importKey('jwk', clean, algorithm, false, [usage]);
  } catch {
    // Web Crypto refuses a scalar out of range and a public point that does not match it.
    throw new ProtocolError('InvalidPrivateKey', 'the JWK is not a valid P-256 private key');
  }
}

/**
 * Imports an ECDH private key from a JWK (test vectors; restoring keys from elsewhere), as a
 * non-extractable key with usage `deriveBits`.
 *
 * Not every engine checks that a JWK's `x`/`y` belong to its `d` (Firefox's does not), and a
 * pair with the wrong public half would fail only later, confusingly. So the import proves the
 * match itself: ECDH with a throwaway key must agree in both directions.
 */
export async function importDhKeyPairJwk(jwk: EcPrivateJwk): Promise<DhKeyPair> {
  const publicKey = await decodeDhPublicKey(jwkPublicBytes(jwk));
  const privateKey = await importPrivateJwk(jwk, ECDH, 'deriveBits');
  const probe = await generateDhKeyPair();
  const [ours, theirs] = await Promise.all([
    diffieHellman(privateKey, probe.publicKey),
    diffieHellman(probe.privateKey, publicKey),
  ]);
  const matches = constantTimeEqual(ours, theirs);
  wipe(ours, theirs);
  if (!matches) throw new ProtocolError('InvalidPrivateKey', 'the JWK public key does not match its private key');
  return { privateKey, publicKey };
}

/**
 * Imports an ECDSA private key from a JWK, non-extractable, usage `sign`. As for ECDH keys, the
 * import proves that the public half matches: a signature by the private key must verify.
 */
export async function importSigningKeyPairJwk(jwk: EcPrivateJwk): Promise<SigningKeyPair> {
  const publicKey = await decodeSigningPublicKey(jwkPublicBytes(jwk));
  const privateKey = await importPrivateJwk(jwk, ECDSA, 'sign');
  const probe = new TextEncoder().encode('Sotto key import check');
  try {
    await verify(publicKey, probe, await sign(privateKey, probe));
  } catch {
    throw new ProtocolError('InvalidPrivateKey', 'the JWK public key does not match its private key');
  }
  return { privateKey, publicKey };
}

// ---- ECDH -------------------------------------------------------------------------------------

/**
 * P-256 ECDH: the X coordinate of `ours · theirs`. An all-zero output is refused
 * (`NonContributoryKey`), compared in constant time.
 */
export async function diffieHellman(ours: CryptoKey, theirs: DhPublicKey): Promise<SharedSecret> {
  checkPrivateKey(ours, 'ECDH', 'deriveBits');
  const publicKey = await importPublic(theirs, ECDH, []);
  let shared: Bytes;
  try {
    shared = new Uint8Array(
      await subtle().deriveBits({ name: 'ECDH', public: publicKey }, ours, SHARED_SECRET_LENGTH * 8),
    );
  } catch {
    // Both keys were checked above, so the only way left to fail is a degenerate result, which
    // an engine may refuse instead of returning zeros: the same outcome for the protocol.
    throw new ProtocolError('NonContributoryKey', 'ECDH produced no usable output');
  }
  if (shared.length !== SHARED_SECRET_LENGTH || isAllZero(shared)) {
    wipe(shared);
    throw new ProtocolError('NonContributoryKey', 'all-zero ECDH output');
  }
  return shared as SharedSecret;
}

// ---- ECDSA ------------------------------------------------------------------------------------

/** Signs `message` with ECDSA P-256 / SHA-256: a 64-byte P1363 signature. */
export async function sign(privateKey: CryptoKey, message: Uint8Array): Promise<Bytes> {
  checkPrivateKey(privateKey, 'ECDSA', 'sign');
  return new Uint8Array(await subtle().sign(ECDSA_SHA256, privateKey, copyBytes(message)));
}

/**
 * Verifies an ECDSA P-256 / SHA-256 P1363 signature; `InvalidSignature` when it is not 64 bytes
 * or does not verify.
 */
export async function verify(publicKey: SigningPublicKey, message: Uint8Array, signature: Uint8Array): Promise<void> {
  if (signature.length !== SIGNATURE_LENGTH) {
    throw new ProtocolError('InvalidSignature', 'a signature is 64 bytes');
  }
  const key = await importPublic(publicKey, ECDSA, ['verify']);
  let valid: boolean;
  try {
    valid = await subtle().verify(ECDSA_SHA256, key, copyBytes(signature), copyBytes(message));
  } catch {
    valid = false;
  }
  if (!valid) throw new ProtocolError('InvalidSignature', 'the signature does not verify');
}
