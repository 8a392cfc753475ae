/**
 * X3DH over P-256 (PROTOCOL.md §5).
 *
 *     DH1 = DH(IKd_A, SPK_B)   DH2 = DH(EK_A, IKd_B)   DH3 = DH(EK_A, SPK_B)   [DH4 = DH(EK_A, OPK_B)]
 *     SK  = HKDF-SHA256(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = "Sotto v1 P-256 X3DH", 32)
 *     AD  = version ‖ suite ‖ id_A ‖ IKs_A ‖ IKd_A ‖ id_B ‖ IKs_B ‖ IKd_B
 *
 * See https://signal.org/docs/specifications/x3dh/; the one difference (no 0xFF prefix, because
 * the signing key is a separate ECDSA key) is explained in docs/PROTOCOL.md.
 */

import { type Bytes, concatBytes, wipe } from './bytes.js';
import { ProtocolError } from './errors.js';
import type { IdentityKeyPair, PublicIdentity } from './identity.js';
import { type RootKey, x3dhSharedSecret } from './kdf.js';
import { type DhKeyPair, type DhPublicKey, diffieHellman, type SharedSecret } from './keys.js';
import type { OneTimePrekey, PrekeyBundle, SignedPrekey } from './prekeys.js';
import { encodeUserId, type UserId } from './userId.js';
import { PROTOCOL_VERSION, SUITE } from './version.js';

/** Builds `AD` (§5, step 5): initiator first, so both sides build the same bytes. */
export function associatedData(
  initiator: UserId,
  initiatorIdentity: PublicIdentity,
  responder: UserId,
  responderIdentity: PublicIdentity,
): Bytes {
  return concatBytes(
    Uint8Array.of(PROTOCOL_VERSION, SUITE),
    encodeUserId(initiator),
    initiatorIdentity.signing,
    initiatorIdentity.dh,
    encodeUserId(responder),
    responderIdentity.signing,
    responderIdentity.dh,
  );
}

/** What the initiator gets from X3DH. */
export interface Initiated {
  /** `SK`, the first root key. */
  readonly sharedSecret: RootKey;
  /** `AD`. */
  readonly associatedData: Bytes;
  /** `EK_A`'s public key, sent in every prekey message. */
  readonly baseKey: DhPublicKey;
  /** Id of the signed prekey used. */
  readonly signedPrekeyId: number;
  /** Id of the one-time prekey used, or `null`. */
  readonly oneTimePrekeyId: number | null;
}

/** What the responder derives from a prekey message. */
export interface Responded {
  /** `SK`. */
  readonly sharedSecret: RootKey;
  /** `AD`. */
  readonly associatedData: Bytes;
}

/** The initiator's values as the responder reads them from a prekey message. */
export interface InitiatorKeys {
  /** The initiator's user id, from the relay's authenticated sender. */
  readonly user: UserId;
  /** The initiator's identity, binding verified. */
  readonly identity: PublicIdentity;
  /** `EK_A`. */
  readonly baseKey: DhPublicKey;
}

/**
 * The initiator's DH outputs in concatenation order (exported for the test vectors). The caller
 * wipes them.
 */
export async function initiatorDhOutputs(
  identity: IdentityKeyPair,
  bundle: PrekeyBundle,
  ephemeral: DhKeyPair,
): Promise<SharedSecret[]> {
  const spk = bundle.signedPrekey.key;
  const opk = bundle.oneTimePrekey;
  return collect([
    () => diffieHellman(identity.dh.privateKey, spk),
    () => diffieHellman(ephemeral.privateKey, bundle.identity.dh),
    () => diffieHellman(ephemeral.privateKey, spk),
    ...(opk === null ? [] : [() => diffieHellman(ephemeral.privateKey, opk.key)]),
  ]);
}

/** The responder's DH outputs in concatenation order (exported for the test vectors). */
export async function responderDhOutputs(
  identity: IdentityKeyPair,
  signedPrekey: SignedPrekey,
  oneTimePrekey: OneTimePrekey | null,
  initiator: InitiatorKeys,
): Promise<SharedSecret[]> {
  const spk = signedPrekey.keyPair.privateKey;
  return collect([
    () => diffieHellman(spk, initiator.identity.dh),
    () => diffieHellman(identity.dh.privateKey, initiator.baseKey),
    () => diffieHellman(spk, initiator.baseKey),
    ...(oneTimePrekey === null ? [] : [() => diffieHellman(oneTimePrekey.keyPair.privateKey, initiator.baseKey)]),
  ]);
}

/** Runs the DH steps in order; if one fails, the outputs computed so far are wiped. */
async function collect(steps: readonly (() => Promise<SharedSecret>)[]): Promise<SharedSecret[]> {
  const outputs: SharedSecret[] = [];
  try {
    for (const step of steps) outputs.push(await step());
    return outputs;
  } catch (error) {
    wipe(...outputs);
    throw error;
  }
}

async function sharedSecretOf(outputs: SharedSecret[]): Promise<RootKey> {
  try {
    return await x3dhSharedSecret(outputs);
  } finally {
    wipe(...outputs);
  }
}

/**
 * Runs the initiator's side against a verified bundle. `ephemeral` is `EK_A`, fresh for this
 * session. `BundleUserMismatch` when the bundle is not `peer`'s; `NonContributoryKey` when a DH
 * output is all zero.
 */
export async function initiate(
  localUser: UserId,
  identity: IdentityKeyPair,
  peer: UserId,
  bundle: PrekeyBundle,
  ephemeral: DhKeyPair,
): Promise<Initiated> {
  if (bundle.userId !== peer) {
    throw new ProtocolError('BundleUserMismatch', 'the bundle is for another user');
  }
  const sharedSecret = await sharedSecretOf(await initiatorDhOutputs(identity, bundle, ephemeral));
  return {
    sharedSecret,
    associatedData: associatedData(localUser, identity.publicIdentity, peer, bundle.identity),
    baseKey: ephemeral.publicKey,
    signedPrekeyId: bundle.signedPrekey.id,
    oneTimePrekeyId: bundle.oneTimePrekey?.id ?? null,
  };
}

/** Runs the responder's side. `NonContributoryKey` when a DH output is all zero. */
export async function respond(
  localUser: UserId,
  identity: IdentityKeyPair,
  signedPrekey: SignedPrekey,
  oneTimePrekey: OneTimePrekey | null,
  initiator: InitiatorKeys,
): Promise<Responded> {
  const sharedSecret = await sharedSecretOf(await responderDhOutputs(identity, signedPrekey, oneTimePrekey, initiator));
  return {
    sharedSecret,
    associatedData: associatedData(initiator.user, initiator.identity, localUser, identity.publicIdentity),
  };
}
