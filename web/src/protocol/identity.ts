/**
 * Identity keys (PROTOCOL.md §4): an ECDSA signing key `IKs` and an ECDH key `IKd`, bound by a
 * signature.
 *
 * Web Crypto cannot use one P-256 key for both signing and key agreement, so a Sotto identity is
 * the pair. A {@link PublicIdentity} is only ever built after its binding signature verified.
 *
 * Unlike the Rust core, whose RFC 6979 signatures are deterministic, Web Crypto's ECDSA draws a
 * random nonce: the binding signature cannot be recomputed on restore, so an
 * {@link IdentityKeyPair} stores it.
 */

import { type Bytes, copyBytes } from './bytes.js';
import {
  type DhKeyPair,
  type DhPublicKey,
  generateDhKeyPair,
  generateSigningKeyPair,
  samePublicKey,
  sign,
  type SigningKeyPair,
  type SigningPublicKey,
  verify,
} from './keys.js';
import { identityBindingMessage } from './signing.js';

/** A user's public identity: `IKs`, `IKd` and the binding signature, verified. */
export interface PublicIdentity {
  /** `IKs`: verifies the binding, signed prekeys and login challenges. */
  readonly signing: SigningPublicKey;
  /** `IKd`: the identity's ECDH key, used in X3DH. */
  readonly dh: DhPublicKey;
  /** `IKs`'s signature over `IKd` (§4.1), 64 bytes P1363. */
  readonly signature: Bytes;
}

/** A device's own identity: both private keys and the public identity. Structured-clonable. */
export interface IdentityKeyPair {
  /** `IKs` with its non-extractable private key. */
  readonly signing: SigningKeyPair;
  /** `IKd` with its non-extractable private key. */
  readonly dh: DhKeyPair;
  /** What is published in bundles and prekey messages. */
  readonly publicIdentity: PublicIdentity;
}

/** Verifies the identity binding signature and builds the identity (`InvalidSignature`). */
export async function verifyPublicIdentity(
  signing: SigningPublicKey,
  dh: DhPublicKey,
  signature: Uint8Array,
): Promise<PublicIdentity> {
  await verify(signing, identityBindingMessage(signing, dh), signature);
  return { signing, dh, signature: copyBytes(signature) };
}

/** Builds an identity from its two key pairs, signing `IKd` with `IKs`. */
export async function identityFromKeyPairs(signing: SigningKeyPair, dh: DhKeyPair): Promise<IdentityKeyPair> {
  const signature = await sign(signing.privateKey, identityBindingMessage(signing.publicKey, dh.publicKey));
  return { signing, dh, publicIdentity: { signing: signing.publicKey, dh: dh.publicKey, signature } };
}

/**
 * Rebuilds an identity from its key pairs and a binding signature made earlier (restoring from
 * storage, test vectors). The signature is verified.
 */
export async function identityFromParts(
  signing: SigningKeyPair,
  dh: DhKeyPair,
  signature: Uint8Array,
): Promise<IdentityKeyPair> {
  const publicIdentity = await verifyPublicIdentity(signing.publicKey, dh.publicKey, signature);
  return { signing, dh, publicIdentity };
}

/** Generates a new identity with non-extractable private keys. */
export async function generateIdentity(): Promise<IdentityKeyPair> {
  return identityFromKeyPairs(await generateSigningKeyPair(), await generateDhKeyPair());
}

/**
 * Whether two identities have the same keys. Signatures are not compared: ECDSA signatures are
 * not unique, and both were verified.
 */
export function sameIdentityKeys(a: PublicIdentity, b: PublicIdentity): boolean {
  return samePublicKey(a.signing, b.signing) && samePublicKey(a.dh, b.dh);
}
