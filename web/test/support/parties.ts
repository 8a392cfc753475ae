/**
 * Fresh parties for conversation tests: generated identities and prekeys, a prekey store that
 * deletes a one-time prekey only when told (as a client does after saving), and helpers that
 * send and deliver records through the real wire encoding.
 */

import { generateIdentity, type IdentityKeyPair } from '../../src/protocol/identity.js';
import { type KeySource, generateDhKeyPair } from '../../src/protocol/keys.js';
import {
  createBundle,
  generateOneTimePrekey,
  generateSignedPrekey,
  type OneTimePrekey,
  type PrekeyBundle,
  type PrekeyLookup,
  publicOneTimePrekey,
  publicSignedPrekey,
  type SignedPrekey,
} from '../../src/protocol/prekeys.js';
import { noDigest, type MessageDigest, type PlaintextRecord } from '../../src/protocol/record.js';
import { type Decrypted, type LocalParty, SessionRecord } from '../../src/protocol/session.js';
import { parseUserId, type UserId } from '../../src/protocol/userId.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/wire.js';
import { assert, assertEqual } from './assert.js';

/** One side of a test conversation. */
export class TestParty {
  readonly local: LocalParty;
  readonly signedPrekey: SignedPrekey;
  readonly oneTimePrekeys = new Map<number, OneTimePrekey>();
  /** This party's sessions with its one peer (tests may swap in a crafted record). */
  record = new SessionRecord();
  /** How many records this party has sent, for the record counter. */
  sent = 0n;
  /** Counter and digest of the last record received, for the next record's header. */
  lastReceived: { counter: bigint; digest: MessageDigest } = { counter: 0n, digest: noDigest() };
  /** Where fresh ratchet keys come from (overridable). */
  keys: KeySource = generateDhKeyPair;

  private constructor(userId: UserId, identity: IdentityKeyPair, signedPrekey: SignedPrekey) {
    this.local = { userId, identity };
    this.signedPrekey = signedPrekey;
  }

  static async create(name: string, oneTimePrekeys = 2): Promise<TestParty> {
    const identity = await generateIdentity();
    const party = new TestParty(parseUserId(name), identity, await generateSignedPrekey(identity, 1, 1_767_225_600));
    for (let id = 100; id < 100 + oneTimePrekeys; id++) party.oneTimePrekeys.set(id, await generateOneTimePrekey(id));
    return party;
  }

  get userId(): UserId {
    return this.local.userId;
  }

  /** A bundle as the relay would hand it out, with the next one-time prekey if any. */
  async bundle(withOneTimePrekey = true): Promise<PrekeyBundle> {
    const opk = withOneTimePrekey ? [...this.oneTimePrekeys.values()][0] : undefined;
    return createBundle(
      this.userId,
      this.local.identity.publicIdentity,
      publicSignedPrekey(this.signedPrekey),
      opk === undefined ? null : publicOneTimePrekey(opk),
    );
  }

  /** Lookup over this party's prekeys; nothing is deleted until {@link accept}. */
  get prekeys(): PrekeyLookup {
    return {
      signedPrekey: (id) => (id === this.signedPrekey.id ? this.signedPrekey : null),
      oneTimePrekey: (id) => this.oneTimePrekeys.get(id) ?? null,
    };
  }

  /** The next text record this party sends. */
  text(text: string): PlaintextRecord {
    this.sent += 1n;
    return {
      sentAt: 1_767_225_600_000n + this.sent,
      counter: this.sent,
      lastReceivedCounter: this.lastReceived.counter,
      lastReceivedDigest: this.lastReceived.digest,
      body: { kind: 'text', text },
    };
  }

  /** Encrypts a text for the peer; returns the envelope as wire JSON. */
  async send(text: string): Promise<string> {
    const { envelope } = await this.record.encrypt(this.text(text));
    return encodeEnvelope(envelope);
  }

  /** Decodes and decrypts wire JSON from `sender`, then does what a client does after saving. */
  async receive(sender: TestParty, json: string): Promise<Decrypted> {
    const decrypted = await this.record.decrypt(this.local, sender.userId, await decodeEnvelope(json), this.prekeys, this.keys);
    this.lastReceived = { counter: decrypted.record.counter, digest: decrypted.digest };
    if (decrypted.usedOneTimePrekey !== null) this.oneTimePrekeys.delete(decrypted.usedOneTimePrekey);
    return decrypted;
  }

  /** Receives and checks the text. */
  async expect(sender: TestParty, json: string, text: string): Promise<Decrypted> {
    const decrypted = await this.receive(sender, json);
    const body = decrypted.record.body;
    assert(body.kind === 'text', 'a text record');
    assertEqual(body.text, text, 'decrypted text');
    return decrypted;
  }
}

/** Alice with a session to Bob from Bob's bundle. */
export async function pair(): Promise<{ alice: TestParty; bob: TestParty }> {
  const alice = await TestParty.create('alice');
  const bob = await TestParty.create('bob');
  await alice.record.initiate(alice.local, bob.userId, await bob.bundle());
  return { alice, bob };
}
