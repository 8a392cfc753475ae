/**
 * The shared test vectors (test-vectors/*.json), written once as a list of named async cases.
 *
 * This module depends only on `globalThis.crypto.subtle` and the tiny assertion helper: the Node
 * runner (test/node/vectors.test.ts) registers every case with node:test, and a browser harness
 * can run the very same list inside a real browser, loading the files with `fetch`.
 *
 * Each case recomputes its outputs from the vector's inputs and compares bytes and strings. For
 * signatures, which Web Crypto does not make deterministically, a case rebuilds the signed
 * message from the inputs and the signer's keys, compares it with `message`, and verifies the
 * signature. Invalid inputs must fail with the vector's error code.
 */

import { open, seal } from '../../src/protocol/aead.js';
import { concatBytes, fromHex, toBase64Url } from '../../src/protocol/bytes.js';
import { encodeHeader, type Header, messageAssociatedData } from '../../src/protocol/header.js';
import { expandMessageKey, kdfCk, kdfRk, type ChainKey, type MessageKey, type RootKey, x3dhSharedSecret } from '../../src/protocol/kdf.js';
import {
  decodeDhPublicKey,
  decodeSigningPublicKey,
  diffieHellman,
  importSigningKeyPairJwk,
  type SharedSecret,
  sign,
  verify,
} from '../../src/protocol/keys.js';
import { publicOneTimePrekey, publicSignedPrekey } from '../../src/protocol/prekeys.js';
import { decodeRecord, encodeRecord, padRecord, recordDigest, unpadRecord } from '../../src/protocol/record.js';
import { fingerprint, fingerprintDigits, matchesQr, safetyNumber } from '../../src/protocol/safetyNumber.js';
import { SessionRecord } from '../../src/protocol/session.js';
import { authenticationMessage, identityBindingMessage, signedPrekeyMessage } from '../../src/protocol/signing.js';
import { parseUserId } from '../../src/protocol/userId.js';
import { decodeBundle, decodeEnvelope, encodeBundle, encodeEnvelope } from '../../src/protocol/wire.js';
import { associatedData, initiate, initiatorDhOutputs, respond, responderDhOutputs } from '../../src/protocol/x3dh.js';
import { assert, AssertionError, assertBytes, assertEqual, assertRejects } from '../support/assert.js';
import { once, type TestCase } from '../support/cases.js';
import { snapshot } from '../support/state.js';
import { assertRecord, checkKeyEncodings, dhKeyPair, importParty, type Party, recordFromVector, replayKeys } from './fixtures.js';
import type {
  AeadFile,
  EcdhFile,
  KdfFile,
  KeysFile,
  RatchetFile,
  RatchetStep,
  RecordsFile,
  SafetyNumberFile,
  SignaturesFile,
  WireFile,
  X3dhFile,
} from './types.js';

/** Loads one vector file by name (`"keys.json"`) and returns its parsed JSON. */
export type LoadVectorFile = (file: string) => Promise<unknown>;

/** Every vector file, in the order the Rust generator writes them. */
export const VECTOR_FILES = [
  'keys.json',
  'ecdh.json',
  'signatures.json',
  'kdf.json',
  'x3dh.json',
  'aead.json',
  'records.json',
  'wire.json',
  'ratchet.json',
  'safety-number.json',
] as const;

/** The top-level sections of each file that the cases below check. */
const SECTIONS: { readonly [file in (typeof VECTOR_FILES)[number]]: readonly string[] } = {
  'keys.json': ['valid', 'invalid'],
  'ecdh.json': ['cases', 'invalid'],
  'signatures.json': ['signer', 'cases'],
  'kdf.json': ['rootChain', 'chainKey', 'messageKeys'],
  'x3dh.json': ['cases'],
  'aead.json': ['cases'],
  'records.json': ['valid', 'unsupported', 'invalid'],
  'wire.json': ['bundles', 'envelopes', 'invalid'],
  'ratchet.json': [
    'alice',
    'bob',
    'bundleJson',
    'ephemeral',
    'associatedData',
    'aliceRatchetKeys',
    'bobRatchetKeys',
    'messages',
    'steps',
  ],
  'safety-number.json': ['cases'],
};

/** Loads every vector file and returns one named case per vector. */
export async function vectorCases(load: LoadVectorFile): Promise<TestCase[]> {
  const files = await Promise.all(VECTOR_FILES.map(async (file) => [file, await load(file)] as const));
  const cases: TestCase[] = [];
  for (const [file, data] of files) {
    const add = (name: string, run: () => Promise<void>): void => {
      cases.push({ suite: file, name, run });
    };
    add('format: version 1, every section known', async () => {
      assert(typeof data === 'object' && data !== null, 'the file is a JSON object');
      assertEqual((data as { version?: unknown }).version as number, 1, 'format version');
      // A section this suite does not read would pass unchecked: fail until it is handled.
      const sections = Object.keys(data).filter((key) => key !== 'description' && key !== 'version').sort();
      assertEqual(sections.join(','), [...SECTIONS[file]].sort().join(','), 'sections');
    });
    switch (file) {
      case 'keys.json':
        keysCases(data as KeysFile, add);
        break;
      case 'ecdh.json':
        ecdhCases(data as EcdhFile, add);
        break;
      case 'signatures.json':
        signatureCases(data as SignaturesFile, add);
        break;
      case 'kdf.json':
        kdfCases(data as KdfFile, add);
        break;
      case 'x3dh.json':
        x3dhCases(data as X3dhFile, add);
        break;
      case 'aead.json':
        aeadCases(data as AeadFile, add);
        break;
      case 'records.json':
        recordCases(data as RecordsFile, add);
        break;
      case 'wire.json':
        wireCases(data as WireFile, add);
        break;
      case 'ratchet.json':
        ratchetCases(data as RatchetFile, add);
        break;
      case 'safety-number.json':
        safetyNumberCases(data as SafetyNumberFile, add);
        break;
    }
  }
  return cases;
}

type Add = (name: string, run: () => Promise<void>) => void;

// ---- keys.json --------------------------------------------------------------------------------

function keysCases(v: KeysFile, add: Add): void {
  for (const [i, key] of v.valid.entries()) {
    add(`valid ${key.name}`, async () => {
      checkKeyEncodings(key, key.name);
      assertBytes(await decodeDhPublicKey(fromHex(key.public)), key.public, 'decoded as an ECDH key');
      assertBytes(await decodeSigningPublicKey(fromHex(key.public)), key.public, 'decoded as an ECDSA key');
      const pair = await dhKeyPair(key, key.name);
      assert(!pair.privateKey.extractable, 'the imported private key is non-extractable');
      const signing = await importSigningKeyPairJwk(key.jwk);
      assertBytes(signing.publicKey, key.public, 'ECDSA import gives the same public key');
      // The JWK's scalar belongs to its public key: ECDH agrees with the next key both ways.
      const other = v.valid[(i + 1) % v.valid.length];
      assert(other !== undefined, 'another valid key');
      const otherPair = await dhKeyPair(other, other.name);
      const ours = await diffieHellman(pair.privateKey, otherPair.publicKey);
      const theirs = await diffieHellman(otherPair.privateKey, pair.publicKey);
      assertBytes(ours, theirs, 'ECDH agrees in both directions');
    });
  }
  for (const key of v.invalid) {
    add(`invalid ${key.name}`, async () => {
      const bytes = fromHex(key.public);
      await assertRejects(() => decodeDhPublicKey(bytes), key.error, `${key.name} as an ECDH key`);
      await assertRejects(() => decodeSigningPublicKey(bytes), key.error, `${key.name} as an ECDSA key`);
    });
  }
}

// ---- ecdh.json --------------------------------------------------------------------------------

function ecdhCases(v: EcdhFile, add: Add): void {
  for (const c of v.cases) {
    add(c.name, async () => {
      const ours = await dhKeyPair(c.private, c.name);
      const peer = await decodeDhPublicKey(fromHex(c.peerPublic));
      assertBytes(await diffieHellman(ours.privateKey, peer), c.shared, 'shared secret');
    });
  }
  for (const c of v.invalid) {
    add(`invalid ${c.name}`, async () => {
      const ours = await dhKeyPair(c.private, c.name);
      // The peer's key is a valid point: the refusal comes from the all-zero output.
      const peer = await decodeDhPublicKey(fromHex(c.peerPublic));
      await assertRejects(() => diffieHellman(ours.privateKey, peer), c.error, 'ECDH');
    });
  }
}

// ---- signatures.json --------------------------------------------------------------------------

function signatureCases(v: SignaturesFile, add: Add): void {
  const signer = once(async () => {
    checkKeyEncodings(v.signer.signing, 'signer IKs');
    const signing = await importSigningKeyPairJwk(v.signer.signing.jwk);
    assertBytes(signing.publicKey, v.signer.signing.public, 'signer IKs public');
    const dh = await dhKeyPair(v.signer.dh, 'signer IKd');
    return { signing, dh };
  });
  add('signer binding signature', async () => {
    const { signing, dh } = await signer();
    await verify(signing.publicKey, identityBindingMessage(signing.publicKey, dh.publicKey), fromHex(v.signer.bindingSignature));
  });
  for (const c of v.cases) {
    add(c.name, async () => {
      const { signing, dh } = await signer();
      const inputs = c.inputs;
      let rebuilt: Uint8Array;
      switch (c.kind) {
        case 'identityBinding':
          assertBytes(dh.publicKey, inputs.dhPublic ?? '', 'the signed IKd is the signer\'s');
          rebuilt = identityBindingMessage(signing.publicKey, dh.publicKey);
          break;
        case 'signedPrekey':
          rebuilt = signedPrekeyMessage(
            signing.publicKey,
            inputs.id ?? -1,
            inputs.createdAt ?? -1,
            await decodeDhPublicKey(fromHex(inputs.keyPublic ?? '')),
          );
          break;
        case 'authentication':
          rebuilt = authenticationMessage(inputs.host ?? '', parseUserId(inputs.userId ?? ''), fromHex(inputs.nonce ?? ''));
          break;
      }
      const message = fromHex(c.message);
      if (c.name.endsWith('-tampered-message')) {
        // The vector's message is the real one with its last bit flipped.
        const expected = rebuilt.slice();
        expected[expected.length - 1] = (expected[expected.length - 1] ?? 0) ^ 0x01;
        assertBytes(message, expected, 'tampered message');
      } else {
        assertBytes(rebuilt, message, 'signed message');
      }
      const signature = fromHex(c.signature);
      if (c.valid) {
        await verify(signing.publicKey, message, signature);
      } else {
        await assertRejects(() => verify(signing.publicKey, message, signature), 'InvalidSignature', 'verification');
      }
      // Our own signature over the rebuilt message verifies too.
      await verify(signing.publicKey, rebuilt, await sign(signing.privateKey, rebuilt));
    });
  }
}

// ---- kdf.json ---------------------------------------------------------------------------------

function kdfCases(v: KdfFile, add: Add): void {
  for (const [i, c] of v.rootChain.entries()) {
    add(`KDF_RK ${i}`, async () => {
      const next = await kdfRk(fromHex(c.rootKey) as RootKey, fromHex(c.dhOutput) as SharedSecret);
      assertBytes(next.rootKey, c.nextRootKey, 'next root key');
      assertBytes(next.chainKey, c.chainKey, 'chain key');
    });
  }
  for (const [i, c] of v.chainKey.entries()) {
    add(`KDF_CK ${i}`, async () => {
      const next = await kdfCk(fromHex(c.chainKey) as ChainKey);
      assertBytes(next.messageKey, c.messageKey, 'message key');
      assertBytes(next.chainKey, c.nextChainKey, 'next chain key');
      const following = v.chainKey[i + 1];
      if (following !== undefined) assertBytes(next.chainKey, following.chainKey, 'the chain continues');
    });
  }
  for (const [i, c] of v.messageKeys.entries()) {
    add(`message keys ${i}`, async () => {
      const material = await expandMessageKey(fromHex(c.messageKey) as MessageKey);
      assertBytes(material.key, c.aesKey, 'AES key');
      assertBytes(material.nonce, c.nonce, 'nonce');
    });
  }
}

// ---- x3dh.json --------------------------------------------------------------------------------

function x3dhCases(v: X3dhFile, add: Add): void {
  for (const c of v.cases) {
    add(c.name, async () => {
      const alice = await importParty(c.alice, 'alice');
      const bob = await importParty(c.bob, 'bob');
      const ephemeral = await dhKeyPair(c.ephemeral, 'ephemeral');
      const withOneTime = c.dh.dh4 !== undefined;

      const bundle = await decodeBundle(c.bundleJson);
      assertEqual(encodeBundle(bundle), c.bundleJson, 'bundle JSON round trip');
      assertEqual(bundle.userId, bob.userId, 'bundle user');
      assertBytes(bundle.identity.signing, bob.identity.publicIdentity.signing, 'bundle IKs');
      assertBytes(bundle.identity.dh, bob.identity.publicIdentity.dh, 'bundle IKd');
      assertBytes(bundle.signedPrekey.key, publicSignedPrekey(bob.signedPrekey).key, 'bundle SPK');
      assertEqual(bundle.signedPrekey.id, bob.signedPrekey.id, 'bundle SPK id');
      assertEqual(bundle.oneTimePrekey?.id ?? null, withOneTime ? bob.oneTimePrekey.id : null, 'bundle OPK id');
      if (withOneTime) assertBytes(bundle.oneTimePrekey?.key ?? new Uint8Array(), publicOneTimePrekey(bob.oneTimePrekey).key, 'bundle OPK');

      const expected = [c.dh.dh1, c.dh.dh2, c.dh.dh3, ...(c.dh.dh4 === undefined ? [] : [c.dh.dh4])];
      const outputs = await initiatorDhOutputs(alice.identity, bundle, ephemeral);
      assertEqual(outputs.length, expected.length, 'number of DH outputs');
      outputs.forEach((output, i) => assertBytes(output, expected[i] ?? '', `initiator DH${i + 1}`));
      assertBytes(concatBytes(...outputs), c.ikm, 'ikm');
      assertBytes(await x3dhSharedSecret(outputs), c.sharedSecret, 'SK from the DH outputs');

      const initiated = await initiate(alice.userId, alice.identity, bob.userId, bundle, ephemeral);
      assertBytes(initiated.sharedSecret, c.sharedSecret, 'initiator SK');
      assertBytes(initiated.associatedData, c.associatedData, 'initiator AD');
      assertBytes(initiated.baseKey, c.ephemeral.public, 'base key');
      assertEqual(initiated.oneTimePrekeyId, bundle.oneTimePrekey?.id ?? null, 'one-time prekey id');

      const initiator = { user: alice.userId, identity: alice.identity.publicIdentity, baseKey: ephemeral.publicKey };
      const oneTime = withOneTime ? bob.oneTimePrekey : null;
      const responderOutputs = await responderDhOutputs(bob.identity, bob.signedPrekey, oneTime, initiator);
      responderOutputs.forEach((output, i) => assertBytes(output, expected[i] ?? '', `responder DH${i + 1}`));
      const responded = await respond(bob.userId, bob.identity, bob.signedPrekey, oneTime, initiator);
      assertBytes(responded.sharedSecret, c.sharedSecret, 'responder SK');
      assertBytes(responded.associatedData, c.associatedData, 'responder AD');
      assertBytes(
        associatedData(alice.userId, alice.identity.publicIdentity, bob.userId, bob.identity.publicIdentity),
        c.associatedData,
        'AD rebuilt from the identities',
      );
    });
  }
}

// ---- aead.json --------------------------------------------------------------------------------

function aeadCases(v: AeadFile, add: Add): void {
  for (const c of v.cases) {
    add(c.name, async () => {
      const material = await expandMessageKey(fromHex(c.messageKey) as MessageKey);
      assertBytes(material.key, c.aesKey, 'AES key');
      assertBytes(material.nonce, c.nonce, 'nonce');
      const dh = await decodeDhPublicKey(Uint8Array.from(atob(c.header.dhB64.replace(/-/g, '+').replace(/_/g, '/')), (ch) => ch.charCodeAt(0)));
      assertEqual(toBase64Url(dh), c.header.dhB64, 'header dh base64url');
      const header: Header = { dh, pn: c.header.pn, n: c.header.n };
      assertBytes(encodeHeader(header), c.headerBytes, 'header bytes');
      const aad = messageAssociatedData(fromHex(c.associatedData), header);
      assertBytes(aad, c.aad, 'AD ‖ header bytes');
      const plaintext = fromHex(c.plaintext);
      assertBytes(await seal(material, plaintext, aad), c.ciphertext, 'ciphertext');
      assertBytes(await open(material, fromHex(c.ciphertext), aad), c.plaintext, 'opened plaintext');
      const record = decodeRecord(unpadRecord(plaintext));
      assertEqual(record.body.kind, 'text', 'the plaintext is a padded text record');
      const tampered = fromHex(c.ciphertext);
      tampered[0] = (tampered[0] ?? 0) ^ 0x01;
      await assertRejects(() => open(material, tampered, aad), 'DecryptionFailed', 'tampered ciphertext');
    });
  }
}

// ---- records.json -----------------------------------------------------------------------------

function recordCases(v: RecordsFile, add: Add): void {
  for (const c of v.valid) {
    add(`valid ${c.name}`, async () => {
      const record = recordFromVector(c.record);
      const encoded = encodeRecord(record);
      assertBytes(encoded, c.encoded, 'encoded record');
      assertBytes(padRecord(encoded), c.padded, 'padded record');
      assertBytes(await recordDigest(encoded), c.digest, 'digest');
      const unpadded = unpadRecord(fromHex(c.padded));
      assertBytes(unpadded, c.encoded, 'unpadded record');
      assertRecord(decodeRecord(unpadded), c.record, 'decoded record');
    });
  }
  for (const c of v.unsupported) {
    add(`unsupported ${c.name}`, async () => {
      assertRecord(decodeRecord(unpadRecord(fromHex(c.padded))), c.record, 'decoded record');
    });
  }
  for (const c of v.invalid) {
    add(`invalid ${c.name}`, async () => {
      await assertRejects(() => decodeRecord(unpadRecord(fromHex(c.padded))), c.error, c.name);
    });
  }
}

// ---- wire.json --------------------------------------------------------------------------------

function wireCases(v: WireFile, add: Add): void {
  for (const c of v.bundles) {
    add(`bundle ${c.name}`, async () => {
      const bundle = await decodeBundle(c.json);
      assertEqual(bundle.userId, c.userId, 'user id');
      assertEqual(bundle.signedPrekey.id, c.signedPrekeyId, 'signed prekey id');
      assertEqual(bundle.oneTimePrekey?.id ?? null, c.oneTimePrekeyId, 'one-time prekey id');
      assertEqual(encodeBundle(bundle), c.json, 'encoded again, byte for byte');
    });
  }
  for (const c of v.envelopes) {
    add(`envelope ${c.name}`, async () => {
      const envelope = await decodeEnvelope(c.json);
      assertBytes(envelope.header.dh, c.header.dh, 'header dh');
      assertEqual(envelope.header.pn, c.header.pn, 'header pn');
      assertEqual(envelope.header.n, c.header.n, 'header n');
      assertEqual(envelope.prekey !== null, c.isPrekeyMessage, 'is a prekey message');
      assertEqual(envelope.ciphertext.length, c.ciphertextLength, 'ciphertext length');
      assertEqual(encodeEnvelope(envelope), c.json, 'encoded again, byte for byte');
    });
  }
  for (const c of v.invalid) {
    add(`invalid ${c.kind} ${c.name}`, async () => {
      const decode = c.kind === 'envelope' ? decodeEnvelope : decodeBundle;
      await assertRejects(() => decode(c.json), c.error, c.name);
    });
  }
}

// ---- ratchet.json -----------------------------------------------------------------------------

interface Speaker {
  readonly party: Party;
  readonly record: SessionRecord;
  readonly keys: ReturnType<typeof replayKeys>;
}

type StepResult = { readonly ok: true } | { readonly ok: false; readonly error: unknown };

function ratchetCases(v: RatchetFile, add: Add): void {
  const setUp = once(async () => {
    const alice = await importParty(v.alice, 'alice');
    const bob = await importParty(v.bob, 'bob');
    const bundle = await decodeBundle(v.bundleJson);
    assertEqual(encodeBundle(bundle), v.bundleJson, 'bundle JSON round trip');
    assertBytes(bundle.signedPrekey.key, bob.signedPrekey.keyPair.publicKey, 'the bundle carries Bob\'s SPK');
    const aliceKeys = replayKeys(
      [await dhKeyPair(v.ephemeral, 'ephemeral'), ...(await Promise.all(v.aliceRatchetKeys.map((k, i) => dhKeyPair(k, `alice ratchet key ${i}`))))],
      'alice',
    );
    const bobKeys = replayKeys(await Promise.all(v.bobRatchetKeys.map((k, i) => dhKeyPair(k, `bob ratchet key ${i}`))), 'bob');
    const speakers = {
      alice: { party: alice, record: new SessionRecord(), keys: aliceKeys },
      bob: { party: bob, record: new SessionRecord(), keys: bobKeys },
    } satisfies Record<'alice' | 'bob', Speaker>;
    await speakers.alice.record.initiate(
      { userId: alice.userId, identity: alice.identity },
      bob.userId,
      bundle,
      aliceKeys.source,
    );
    const session = speakers.alice.record.current;
    assert(session !== null, 'Alice has a session');
    assertBytes(session.associatedData, v.associatedData, 'associated data');
    assertBytes(session.baseKey, v.ephemeral.public, 'base key is the ephemeral key');
    return { speakers, bundle };
  });

  const play = once(async (): Promise<StepResult[]> => {
    const { speakers, bundle } = await setUp();
    const results: StepResult[] = [];
    for (const step of v.steps) {
      if (results.some((r) => !r.ok)) {
        results.push({ ok: false, error: new AssertionError('not reached: an earlier step failed') });
        continue;
      }
      try {
        await playStep(v, step, speakers, bundle.oneTimePrekey?.id ?? null);
        results.push({ ok: true });
      } catch (error) {
        results.push({ ok: false, error });
      }
    }
    return results;
  });

  add('setup: parties, bundle, initiation, associated data', async () => {
    await setUp();
  });
  for (const [i, step] of v.steps.entries()) {
    const target = step.op === 'send' ? '' : ` to ${step.to}`;
    add(`step ${i}: ${step.op} message ${step.message}${target}`, async () => {
      const result = (await play())[i];
      assert(result !== undefined, 'step played');
      if (!result.ok) throw result.error;
    });
  }
  add('every listed ratchet key was used, in order', async () => {
    await play();
    const { speakers } = await setUp();
    assertEqual(speakers.alice.keys.remaining(), 0, 'Alice\'s keys left over');
    assertEqual(speakers.bob.keys.remaining(), 0, 'Bob\'s keys left over');
  });
}

async function playStep(
  v: RatchetFile,
  step: RatchetStep,
  speakers: { readonly alice: Speaker; readonly bob: Speaker },
  bundleOneTimePrekey: number | null,
): Promise<void> {
  const message = v.messages[step.message];
  assert(message !== undefined && message.index === step.message, `message ${step.message} exists`);
  if (step.op === 'send') {
    const speaker = speakers[message.from];
    const record = recordFromVector(message.record);
    const encoded = encodeRecord(record);
    assertBytes(encoded, message.encodedRecord, 'encoded record');
    assertBytes(padRecord(encoded), message.paddedRecord, 'padded record');
    const chain = speaker.record.current?.ratchet.sendingChain ?? null;
    assert(chain !== null, 'the sender has a sending chain');
    const { messageKey } = await kdfCk(chain);
    assertBytes(messageKey, message.messageKey ?? '', 'message key');
    const material = await expandMessageKey(messageKey);
    assertBytes(material.key, message.aesKey ?? '', 'AES key');
    assertBytes(material.nonce, message.nonce ?? '', 'nonce');
    const { envelope, digest } = await speaker.record.encrypt(record);
    assertBytes(digest, message.digest, 'digest');
    assertBytes(envelope.header.dh, message.header.dh, 'header dh');
    assertEqual(envelope.header.pn, message.header.pn, 'header pn');
    assertEqual(envelope.header.n, message.header.n, 'header n');
    assertBytes(encodeHeader(envelope.header), message.headerBytes, 'header bytes');
    assertEqual(encodeEnvelope(envelope), message.envelopeJson, 'envelope JSON');
    return;
  }

  const receiver = speakers[step.to];
  const sender = speakers[step.to === 'alice' ? 'bob' : 'alice'];
  let json = message.envelopeJson;
  if (step.op === 'deliverTampered') {
    const original = await decodeEnvelope(message.envelopeJson);
    const ciphertext = original.ciphertext.slice();
    ciphertext[0] = (ciphertext[0] ?? 0) ^ 0x01;
    json = encodeEnvelope({ ...original, ciphertext });
    assertEqual(json, step.tamperedEnvelopeJson, 'tampered envelope: the first ciphertext bit flipped');
  }
  const envelope = await decodeEnvelope(json);
  const local = { userId: receiver.party.userId, identity: receiver.party.identity };
  const decrypt = () =>
    receiver.record.decrypt(local, sender.party.userId, envelope, receiver.party.prekeys, receiver.keys.source);
  if (step.result === 'ok') {
    const decrypted = await decrypt();
    assertEqual(decrypted.record.body.kind === 'text' ? decrypted.record.body.text : null, step.text ?? null, 'text');
    assertRecord(decrypted.record, message.record, 'record');
    assertBytes(decrypted.digest, message.digest, 'digest');
    assertEqual(decrypted.usedOneTimePrekey, decrypted.newSession ? bundleOneTimePrekey : null, 'one-time prekey used');
    assertBytes(decrypted.remoteIdentity.signing, sender.party.identity.publicIdentity.signing, 'sender identity');
  } else {
    const before = snapshot(receiver.record.state);
    await assertRejects(decrypt, step.result, 'decryption');
    assertEqual(snapshot(receiver.record.state), before, 'state after the failed decryption');
  }
}

// ---- safety-number.json -----------------------------------------------------------------------

function safetyNumberCases(v: SafetyNumberFile, add: Add): void {
  for (const c of v.cases) {
    add(`${c.userA} and ${c.userB}`, async () => {
      const keys = async (identity: { signing: string; dh: string }) => ({
        signing: await decodeSigningPublicKey(fromHex(identity.signing)),
        dh: await decodeDhPublicKey(fromHex(identity.dh)),
      });
      const userA = parseUserId(c.userA);
      const userB = parseUserId(c.userB);
      const identityA = await keys(c.identityA);
      const identityB = await keys(c.identityB);
      const [fingerprintA, fingerprintB] = await Promise.all([fingerprint(userA, identityA), fingerprint(userB, identityB)]);
      assertBytes(fingerprintA, c.fingerprintA, 'fingerprint A');
      assertBytes(fingerprintB, c.fingerprintB, 'fingerprint B');
      assertEqual(fingerprintDigits(fingerprintA), c.digitsA, 'digits A');
      assertEqual(fingerprintDigits(fingerprintB), c.digitsB, 'digits B');
      const number = await safetyNumber(userA, identityA, userB, identityB);
      assertEqual(number.digits, c.safetyNumber, 'safety number');
      assertEqual(number.grouped, c.grouped, 'grouped');
      assertBytes(number.qr, c.qr, 'QR payload');
      assertEqual(toBase64Url(number.qr), c.qrB64, 'QR payload, base64url');
      assert(matchesQr(number, fromHex(c.qr)), 'the QR payload matches');
      const swapped = await safetyNumber(userB, identityB, userA, identityA);
      assertEqual(swapped.digits, c.safetyNumber, 'the other side sees the same number');
      assertBytes(swapped.qr, c.qr, 'the other side makes the same QR payload');
    });
  }
}
