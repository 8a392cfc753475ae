/**
 * Wire compatibility with the real relay, through the stock npm `socket.io-client` (what
 * `src/transport/relay.ts` wraps), over both transports: challenge, registration with Web
 * Crypto keys from `src/protocol`, login, a bundle, a real encrypted message from one client to
 * another (send, receive, decrypt, acknowledge, delivered receipt, status, resend
 * de-duplication), and the relay's error answers for malformed payloads.
 *
 * Needs `$SOTTO_BIN` (see test/harness/relay.ts).
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { toBase64Url } from '../../src/protocol/bytes.js';
import { generateIdentity, type IdentityKeyPair } from '../../src/protocol/identity.js';
import { generateOneTimePrekey, generateSignedPrekey, type OneTimePrekey, type SignedPrekey } from '../../src/protocol/prekeys.js';
import { noDigest, textRecord } from '../../src/protocol/record.js';
import { emptySessionRecord, initiateSession, promoteSession, sessionRecordDecrypt, sessionRecordEncrypt } from '../../src/protocol/session.js';
import { parseUserId, type UserId } from '../../src/protocol/userId.js';
import { decodeBundleJson, decodeEnvelopeJson, decodePublicIdentityJson, envelopeToJson } from '../../src/protocol/wire.js';
import type { DeliveryReceipt, ReceivedMessage } from '../../src/transport/events.js';
import { isRelayError, RelayConnection } from '../../src/transport/relay.js';
import { type Relay, startRelay } from '../harness/relay.js';

type Transport = 'websocket' | 'polling';

interface Party {
  readonly user: UserId;
  readonly identity: IdentityKeyPair;
  readonly signed: SignedPrekey;
  readonly oneTime: Map<number, OneTimePrekey>;
}

async function party(name: string, oneTime = 5): Promise<Party> {
  const identity = await generateIdentity();
  const signed = await generateSignedPrekey(identity, 1, Math.floor(Date.now() / 1000));
  const keys = new Map<number, OneTimePrekey>();
  for (let id = 2; id < 2 + oneTime; id++) keys.set(id, await generateOneTimePrekey(id));
  return { user: parseUserId(name), identity, signed, oneTime: keys };
}

function spkJson(p: Party): { id: number; key: string; createdAt: number; signature: string } {
  return { id: p.signed.id, key: toBase64Url(p.signed.keyPair.publicKey), createdAt: p.signed.createdAt, signature: toBase64Url(p.signed.signature) };
}

function opkJson(p: Party): { id: number; key: string }[] {
  return [...p.oneTime.values()].map((k) => ({ id: k.id, key: toBase64Url(k.keyPair.publicKey) }));
}

async function connect(relay: Relay, transport: Transport): Promise<RelayConnection> {
  const connection = new RelayConnection({ url: relay.url, host: relay.host, transports: [transport], reconnect: false, timeoutMs: 5000 });
  const opened = new Promise<void>((resolve, reject) => {
    connection.socket.once('connect', () => resolve());
    connection.socket.once('connect_error', reject);
  });
  connection.open();
  await opened;
  // The transport asked for is the one in use (no silent upgrade or fallback).
  assert.equal(connection.socket.io.engine.transport.name, transport);
  return connection;
}

/** Collects pushes of one kind until `count` items arrived. */
function collect<T>(subscribe: (push: (items: T[]) => void) => void, count: number, ms = 5000): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const got: T[] = [];
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${count} pushes arrived`)), ms);
    subscribe((items) => {
      got.push(...items);
      if (got.length >= count) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (isRelayError(error)) return error.code;
    throw error;
  }
  throw new Error('the relay accepted a request it should refuse');
}

for (const transport of ['websocket', 'polling'] as const) {
  describe(`relay wire compatibility over ${transport}`, () => {
    let relay: Relay;
    const open: RelayConnection[] = [];
    const conn = async (): Promise<RelayConnection> => {
      const c = await connect(relay, transport);
      open.push(c);
      return c;
    };

    before(async () => {
      relay = await startRelay();
    });
    after(async () => {
      for (const c of open) c.close();
      await relay.dispose();
    });

    test('challenge answers with a 32-byte nonce, the Host it saw and an expiry', async () => {
      const c = await conn();
      const answer = await c.request('auth:challenge', {});
      assert.equal(typeof answer['nonce'], 'string');
      assert.equal((answer['nonce'] as string).length, 43);
      assert.equal(answer['host'], relay.host);
      assert.ok((answer['expiresAt'] as number) > Date.now());
    });

    test('register, log in again, fetch a bundle, send, receive, decrypt, acknowledge', async () => {
      const alice = await party(`alice-${transport}`);
      const bob = await party(`bob-${transport}`);
      const a = await conn();
      const registered = await a.register(alice.user, alice.identity, spkJson(alice), opkJson(alice));
      // Keys 2 to 6: the lowest the relay holds is 2.
      assert.deepEqual(registered, { userId: alice.user, queued: 0, oneTimePrekeys: 5, oneTimePrekeysFrom: 2 });
      const b = await conn();
      await b.register(bob.user, bob.identity, spkJson(bob), opkJson(bob));

      // A second connection logs in with the same identity.
      const a2 = await conn();
      const login = await a2.login(alice.user, alice.identity);
      assert.equal(login.userId, alice.user);
      assert.equal(login.oneTimePrekeys, 5);
      assert.equal(login.oneTimePrekeysFrom, 2);
      assert.equal(await refusal(a2.login(alice.user, alice.identity)), 'already_authenticated');

      // Identity lookup (no prekey consumed) and a bundle (one consumed), both verified.
      const identity = await decodePublicIdentityJson(await a.identity(bob.user));
      assert.deepEqual(identity.signing, bob.identity.publicIdentity.signing);
      const bundle = await decodeBundleJson(await a.requestBundle(bob.user));
      assert.equal(bundle.userId, bob.user);
      assert.equal(bundle.oneTimePrekey?.id, 2);

      const delivered = collect<DeliveryReceipt>((push) => a.onPushes({ messages: () => undefined, delivered: push, presence: () => undefined, prekeysLow: () => undefined }), 1);
      const received = collect<ReceivedMessage>((push) => b.onPushes({ messages: push, delivered: () => undefined, presence: () => undefined, prekeysLow: () => undefined }), 1);

      let aliceState = promoteSession(emptySessionRecord(), await initiateSession({ userId: alice.user, identity: alice.identity }, bob.user, bundle));
      const record = textRecord('hello over ' + transport, { sentAt: BigInt(Date.now()), counter: 1n, lastReceivedCounter: 0n, lastReceivedDigest: noDigest() });
      const sealed = await sessionRecordEncrypt(aliceState, record);
      aliceState = sealed.state;
      const clientId = toBase64Url(crypto.getRandomValues(new Uint8Array(16)));
      const sent = await a.send({ to: bob.user, id: clientId, envelope: envelopeToJson(sealed.envelope) });
      assert.equal(sent.duplicate, false);

      const [message] = await received;
      assert.ok(message !== undefined);
      assert.equal(message.id, sent.id);
      assert.equal(message.from, alice.user);
      const envelope = await decodeEnvelopeJson(message.envelope);
      const opened = await sessionRecordDecrypt(emptySessionRecord(), { userId: bob.user, identity: bob.identity }, alice.user, envelope, {
        signedPrekey: (id) => (id === bob.signed.id ? bob.signed : null),
        oneTimePrekey: (id) => bob.oneTime.get(id) ?? null,
      });
      assert.deepEqual(opened.record.body, { kind: 'text', text: 'hello over ' + transport });
      assert.equal(opened.usedOneTimePrekey, 2);
      assert.equal(opened.newSession, true);

      // A resend with the same client id, while the message is queued, is stored once.
      const again = await a.send({ to: bob.user, id: clientId, envelope: envelopeToJson(sealed.envelope) });
      assert.deepEqual(again, { id: sent.id, duplicate: true });
      assert.deepEqual(await a.status([sent.id]), [{ id: sent.id, status: 'pending' }]);

      await b.ack([message.id]);
      const [receipt] = await delivered;
      assert.deepEqual(receipt, { id: sent.id, clientId, to: bob.user });
      // Acknowledged messages are deleted: anything the relay no longer holds for this sender
      // reads "delivered" (PROTOCOL.md §15), an id it never held included.
      assert.deepEqual(await a.status([sent.id, 999_999]), [
        { id: sent.id, status: 'delivered' },
        { id: 999_999, status: 'delivered' },
      ]);
    });

    test('queued messages are pushed after login, oldest first', async () => {
      const alice = await party(`carol-${transport}`);
      const bob = await party(`dave-${transport}`);
      const a = await conn();
      await a.register(alice.user, alice.identity, spkJson(alice), opkJson(alice));
      const b = await conn();
      await b.register(bob.user, bob.identity, spkJson(bob), opkJson(bob));
      b.close();
      const bundle = await decodeBundleJson(await a.requestBundle(bob.user));
      let state = promoteSession(emptySessionRecord(), await initiateSession({ userId: alice.user, identity: alice.identity }, bob.user, bundle));
      const ids: number[] = [];
      for (let i = 1; i <= 3; i++) {
        const sealed = await sessionRecordEncrypt(state, textRecord(`m${i}`, { sentAt: 1n, counter: BigInt(i), lastReceivedCounter: 0n, lastReceivedDigest: noDigest() }));
        state = sealed.state;
        ids.push((await a.send({ to: bob.user, id: `m${i}`, envelope: envelopeToJson(sealed.envelope) })).id);
      }
      const b2 = await conn();
      const got = collect<ReceivedMessage>((push) => b2.onPushes({ messages: push, delivered: () => undefined, presence: () => undefined, prekeysLow: () => undefined }), 3);
      const login = await b2.login(bob.user, bob.identity);
      assert.equal(login.queued, 3);
      assert.deepEqual((await got).map((m) => m.id), ids);
    });

    test('prekey upload after login and prekeys:low', async () => {
      const eve = await party(`erin-${transport}`, 20);
      const frank = await party(`frank-${transport}`, 0);
      const e = await conn();
      await e.register(eve.user, eve.identity, spkJson(eve), opkJson(eve));
      const f = await conn();
      await f.register(frank.user, frank.identity, spkJson(frank), []);
      const low = collect<number>((push) => e.onPushes({ messages: () => undefined, delivered: () => undefined, presence: () => undefined, prekeysLow: (n) => push([n]) }), 1);
      await f.requestBundle(eve.user);
      assert.deepEqual(await low, [19]);
      const more = await generateOneTimePrekey(500);
      const upload = await e.uploadPrekeys(null, [{ id: 500, key: toBase64Url(more.keyPair.publicKey) }]);
      // Key 2 was handed out: the relay holds 3 to 21 and 500, all of this upload kept.
      assert.deepEqual(upload, { oneTimePrekeys: 20, oneTimePrekeysFrom: 3, oneTimePrekeysKept: 1 });
      // Without one-time prekeys the bundle carries only the signed prekey.
      const bundle = await decodeBundleJson(await e.requestBundle(frank.user));
      assert.equal(bundle.oneTimePrekey, null);
    });

    test('malformed and refused requests get stable error codes', async () => {
      const c = await conn();
      assert.equal(await refusal(c.request('user:request-key', { userId: 'someone' })), 'unauthenticated');
      assert.equal(await refusal(c.request('message:send', { to: 'x1', id: 'y', envelope: {} })), 'unauthenticated');
      assert.equal(await refusal(c.request('auth:login', { user: 'x' })), 'bad_request');
      assert.equal(await refusal(c.request('auth:login', 'not an object')), 'bad_request');
      assert.equal(await refusal(c.request('auth:login', { userId: 'nobody-here', signature: 'AAAA' })), 'authentication_failed');
      assert.equal(await refusal(c.request('user:register-key', { userId: 'Not Valid!' })), 'invalid_user_id');
      assert.equal(await refusal(c.request('user:register-key', { userId: 'ok-id', surprise: 1 })), 'bad_request');

      const grace = await party(`grace-${transport}`, 1);
      const signature = 'A'.repeat(86);
      const registration = (userId: string): unknown => ({
        userId,
        identity: { signing: toBase64Url(grace.identity.publicIdentity.signing), dh: toBase64Url(grace.identity.publicIdentity.dh), signature: toBase64Url(grace.identity.publicIdentity.signature) },
        signedPrekey: spkJson(grace),
        oneTimePrekeys: [],
        signature,
      });
      assert.equal(await refusal(c.request('user:register-key', registration('No Spaces Allowed'))), 'invalid_user_id');
      const broken = { ...spkJson(grace), signature: 'A'.repeat(86) };
      assert.equal(await refusal(c.request('user:register-key', { ...(registration(grace.user) as object), signedPrekey: broken })), 'invalid_keys');

      const g = await conn();
      await g.register(grace.user, grace.identity, spkJson(grace), opkJson(grace));
      const thief = await conn();
      assert.equal(await refusal(thief.register(grace.user, grace.identity, spkJson(grace), [])), 'user_taken');

      // Logged in: envelopes, recipients and ids are checked.
      const envelope = { version: 1, suite: 1, header: { dh: 'A'.repeat(87), pn: 0, n: 0 }, ciphertext: 'A'.repeat(107) };
      assert.equal(await refusal(g.request('message:send', { to: 'nobody-at-all', id: 'abc', envelope })), 'unknown_user');
      assert.equal(await refusal(g.request('message:send', { to: grace.user, id: 'abc', envelope })), 'bad_request');
      assert.equal(await refusal(g.request('message:send', { to: 'nobody-at-all', id: 'not base64url!', envelope })), 'bad_request');
      assert.equal(await refusal(g.request('message:send', { to: 'nobody-at-all', id: 'abc', envelope: { ...envelope, version: 2 } })), 'bad_request');
      assert.equal(await refusal(g.request('message:send', { to: 'nobody-at-all', id: 'abc', envelope: { ...envelope, ciphertext: 'A'.repeat(70_000) } })), 'too_large');
      assert.equal(await refusal(g.request('message:send', { to: 'nobody-at-all', id: 'abc' })), 'bad_request');
      assert.equal(await refusal(g.request('user:request-key', { userId: 'nobody-at-all' })), 'unknown_user');
      assert.equal(await refusal(g.request('user:request-key', { userId: grace.user })), 'bad_request');
      assert.equal(await refusal(g.request('message:ack', { ids: 'all' })), 'bad_request');
      assert.equal(await refusal(g.request('user:register-key', { oneTimePrekeys: [{ id: 1, key: 'AAAA' }] })), 'invalid_keys');
      // An unknown event asked to be answered gets a clear refusal, not a timeout (the short
      // timeout would turn a missing answer into 'timeout').
      const quiet = new RelayConnection({ url: relay.url, host: relay.host, transports: [transport], reconnect: false, timeoutMs: 300 });
      open.push(quiet);
      const opened = new Promise<void>((resolve) => quiet.socket.once('connect', () => resolve()));
      quiet.open();
      await opened;
      assert.equal(await refusal(quiet.request('no:such-event', {})), 'bad_request');
    });
  });
}
