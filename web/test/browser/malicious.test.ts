/**
 * The web client in Chromium against a lying relay: a man in the middle (test/harness/mitm.ts)
 * between the browsers and a real `sotto serve` substitutes identity keys and bundles, replays
 * an old bundle, flips bits in ciphertext and headers, replays, withholds, reorders and delays
 * messages. Each test asserts what the person sees and what the browser keeps in IndexedDB:
 * a lie is shown as a warning or an undecryptable message, or is dropped, and never changes the
 * sessions, counters or keys behind it.
 *
 * Needs `$SOTTO_BIN` and Chromium (`$CHROMIUM`, default /usr/bin/chromium).
 */

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import type { Page } from 'playwright-core';

import { generateIdentity } from '../../src/protocol/identity.js';
import { generateOneTimePrekey, generateSignedPrekey, publicOneTimePrekey, publicSignedPrekey } from '../../src/protocol/prekeys.js';
import { noDigest, textRecord } from '../../src/protocol/record.js';
import { safetyNumber } from '../../src/protocol/safetyNumber.js';
import { emptySessionRecord, initiateSession, promoteSession, sessionRecordDecrypt, sessionRecordEncrypt } from '../../src/protocol/session.js';
import { parseUserId } from '../../src/protocol/userId.js';
import {
  bundleToJson,
  decodeBundleJson,
  decodeEnvelopeJson,
  decodePublicIdentityJson,
  envelopeToJson,
  publicIdentityToJson,
} from '../../src/protocol/wire.js';
import { Profile } from '../harness/browser.js';
import { expect } from '../harness/expect.js';
import { flipCiphertextBit, type Link, Mitm, type PushedMessage, withHeader } from '../harness/mitm.js';
import { type PageServer, pageFor } from '../harness/page.js';
import { freePort, type Relay, startRelay } from '../harness/relay.js';
import { bubble, online, openConversation, register, send, startConversation } from '../harness/ui.js';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * What the browser keeps about one peer, read straight from its IndexedDB: the session record
 * (ratchet counters, skipped keys, remote keys; CryptoKeys only by type), the contact, the
 * conversation's counters and the number of one-time prekeys left. JSON, so two snapshots
 * compare as strings.
 */
interface Snapshot {
  readonly session: string;
  readonly contact: string;
  readonly counters: string;
  readonly oneTimePrekeys: number;
  readonly oneTimePrekeyIds: readonly number[];
}

async function snapshot(page: Page, peer: string): Promise<Snapshot> {
  return page.evaluate(async (peer: string) => {
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const req = indexedDB.open('sotto');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error ?? new Error('cannot open the store'));
    });
    const ask = <T>(store: string, work: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        const req = work(db.transaction(store, 'readonly').objectStore(store));
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error ?? new Error(`cannot read ${store}`));
      });
    const plain = (value: unknown): unknown => {
      if (value instanceof Uint8Array) return Array.from(value, (b) => b.toString(16).padStart(2, '0')).join('');
      if (typeof value === 'bigint') return `${value}n`;
      if (value instanceof CryptoKey) return `CryptoKey(${value.type})`;
      if (Array.isArray(value)) return value.map(plain);
      if (typeof value === 'object' && value !== null) {
        return Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [k, plain(v)]));
      }
      return value;
    };
    const session = await ask('sessions', (s) => s.get(peer));
    const contact = await ask('contacts', (s) => s.get(peer));
    const conversation = (await ask('conversations', (s) => s.get(peer))) as { counters?: unknown } | undefined;
    const ids = (await ask('oneTimePrekeys', (s) => s.getAllKeys())) as number[];
    db.close();
    return {
      session: JSON.stringify(plain(session ?? null)),
      contact: JSON.stringify(plain(contact ?? null)),
      counters: JSON.stringify(plain(conversation?.counters ?? null)),
      oneTimePrekeys: ids.length,
      oneTimePrekeyIds: ids,
    };
  }, peer);
}

/** The 60 digits the open conversation's safety-number dialog shows. */
async function shownSafetyNumber(page: Page, button: 'Safety number' | 'Compare safety numbers'): Promise<string> {
  await page.getByRole('button', { name: button }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog.locator('.digits'), 'safety number digits').toBeVisible();
  const digits = (await dialog.locator('.digits').getAttribute('data-digits')) ?? '';
  const state = (await dialog.locator('.verify-state').textContent()) ?? '';
  await dialog.getByRole('button', { name: 'Close' }).click();
  assert.match(digits, /^(\d{5} ){11}\d{5}$/);
  return `${digits}|${state}`;
}

const digitsOf = (shown: string): string => shown.split('|')[0] ?? '';

/** A complete, correctly signed bundle for `userId` under a fresh identity: the attacker's. */
async function attackerBundle(userId: string): Promise<{ bundle: ReturnType<typeof bundleToJson>; identity: Awaited<ReturnType<typeof generateIdentity>> }> {
  const identity = await generateIdentity();
  const signed = await generateSignedPrekey(identity, 1, Math.floor(Date.now() / 1000));
  const oneTime = await generateOneTimePrekey(2);
  const bundle = bundleToJson({
    userId: parseUserId(userId),
    identity: identity.publicIdentity,
    signedPrekey: publicSignedPrekey(signed),
    oneTimePrekey: publicOneTimePrekey(oneTime),
  });
  return { bundle, identity };
}

/** What Mallory, presented by the relay as someone else, can do. */
interface Impostor {
  /** A record from her as the user she claims to be, ready to push (a prekey message until answered). */
  write(text: string, counter: bigint, lastReceivedCounter: bigint): Promise<PushedMessage>;
  /** Whether an envelope the victim sent decrypts with her session: sealed for her. */
  reads(envelope: unknown): Promise<boolean>;
}

/**
 * Mallory, whom the relay presents as `claimed` to `victim` with a correctly self-signed
 * identity of her own: she starts a session with the victim's bundle (which the relay fetches
 * on `link`, as it can) and writes records with whatever counters she likes. She holds no key
 * of the real `claimed`, so the victim sees a key change.
 */
async function impostor(link: Link, fakeId: () => number, claimed: string, victim: string): Promise<Impostor> {
  const identity = await generateIdentity();
  const answer = await link.request('user:request-key', { userId: victim });
  assert.ok(isRecord(answer) && answer['ok'] === true, `the relay handed out ${victim}'s bundle`);
  const local = { userId: parseUserId(claimed), identity };
  let state = promoteSession(emptySessionRecord(), await initiateSession(local, parseUserId(victim), await decodeBundleJson(answer['bundle'])));
  return {
    async write(text, counter, lastReceivedCounter) {
      const sealed = await sessionRecordEncrypt(state, textRecord(text, { sentAt: BigInt(Date.now()), counter, lastReceivedCounter, lastReceivedDigest: noDigest() }));
      state = sealed.state;
      return { id: fakeId(), from: claimed, receivedAt: Date.now(), envelope: { ...envelopeToJson(sealed.envelope) } };
    },
    async reads(envelope) {
      const noPrekeys = { signedPrekey: async () => null, oneTimePrekey: async () => null };
      try {
        await sessionRecordDecrypt(state, local, parseUserId(victim), await decodeEnvelopeJson(envelope), noPrekeys);
        return true;
      } catch {
        return false;
      }
    },
  };
}

/** The largest counter a record can carry. */
const MAX_U64 = 2n ** 64n - 1n;

const undecryptable = (page: Page) => page.locator('.messages li.msg[data-kind="undecryptable"]');
const missingNotices = (page: Page) => page.locator('.messages li.notice[data-kind="missing"]');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('web client against a lying relay', () => {
  let relay: Relay;
  let page: PageServer;
  let mitm: Mitm;
  let profiles: Profile[] = [];

  const browser = async (): Promise<Page> => {
    const p = await Profile.create();
    profiles.push(p);
    return p.open();
  };

  /** A registered browser user, connected through the proxy. */
  const user = async (name: string): Promise<Page> => {
    const p = await browser();
    await register(p, mitm.origin, name);
    return p;
  };

  /**
   * Holds back every message the relay pushes to `to` from `from`: the test hands them over
   * itself (or not), changed or not, in any order, with {@link Link.push}.
   */
  const holdMessages = (to: string, from: string): { held: PushedMessage[]; next: (count: number) => Promise<PushedMessage[]> } => {
    const held: PushedMessage[] = [];
    let taken = 0;
    const previous = mitm.deliver;
    mitm.deliver = (link, message) => {
      if (link.user === to && message.from === from) {
        if (!held.some((m) => m.id === message.id)) held.push(message);
        return [];
      }
      return previous(link, message);
    };
    return {
      held,
      next: async (count) => {
        await mitm.waitFor(`${count} more held message(s) from ${from} to ${to}`, () => held.length >= taken + count);
        const out = held.slice(taken, taken + count);
        taken += count;
        return out;
      },
    };
  };

  /** Alice and bob, registered through the proxy, after one honest message from alice to bob. */
  const aliceWroteToBob = async (): Promise<{ alice: Page; bob: Page }> => {
    const alice = await user('alice');
    const bob = await user('bob');
    await startConversation(alice, 'bob');
    await send(alice, 'hello bob');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'hello bob'), 'first message at bob').toBeVisible();
    return { alice, bob };
  };

  beforeEach(async () => {
    // Browsers sign logins for the proxy's address: the relay must answer to that name.
    const port = await freePort();
    relay = await startRelay(['--public-host', `127.0.0.1:${port}`]);
    page = await pageFor(relay);
    mitm = await Mitm.start(relay, page.origin, port);
    profiles = [];
  });

  afterEach(async () => {
    const errors = profiles.flatMap((p) => p.errors);
    for (const p of profiles) await p.dispose();
    await mitm.close();
    await page.close();
    await relay.dispose();
    assert.deepEqual(errors, [], 'no console errors on any page');
    assert.deepEqual(mitm.errors, [], 'no errors in the proxy');
  });

  test('a substituted identity for a known contact is a key change: warning, new safety number, sending blocked', async () => {
    const { alice, bob } = await aliceWroteToBob();
    await send(bob, 'hello alice');
    await expect(bubble(alice, 'hello alice'), 'reply at alice').toBeVisible();

    // Honest so far: both see the same number.
    const honest = await shownSafetyNumber(alice, 'Safety number');
    assert.equal(digitsOf(honest), digitsOf(await shownSafetyNumber(bob, 'Safety number')));
    const trusted = await snapshot(alice, 'bob');

    // From now on the relay answers for bob with Mallory's identity (correctly self-signed).
    const mallory = await generateIdentity();
    const malloryJson = publicIdentityToJson(mallory.publicIdentity);
    let lies = 0;
    mitm.answer = (link, name, request, answer) => {
      if (link.user !== 'alice' || name !== 'user:identity' || !isRecord(request) || request['userId'] !== 'bob' || !isRecord(answer)) return answer;
      lies++;
      return { ...answer, identity: malloryJson };
    };
    const sendsBefore = mitm.sentBy('alice', 'message:send').length;

    // A new connection: the client asks for bob's identity again when his conversation opens.
    await alice.reload();
    await online(alice);
    await openConversation(alice, 'bob');
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'key change warning').toBeVisible();
    assert.ok(lies >= 1, 'the proxy answered with the substituted identity');
    await expect(alice.locator('.messages li.notice[data-kind="key_changed"]'), 'key change notice in the history').toHaveCount(1);
    await expect(alice.getByLabel('Message', { exact: true }), 'composer blocked').toBeDisabled();
    await expect(alice.getByRole('button', { name: 'Send' }), 'send blocked').toBeDisabled();
    await expect(alice.locator('#composer-note'), 'why it is blocked').toContainText('blocked until you accept the new key');
    await expect(alice.locator('button.conv[data-peer="bob"] .conv-preview'), 'list marks the change').toContainText('Safety number changed');

    // The number shown is now the one with Mallory's key: different, and exactly what a
    // comparison with the real bob would expose.
    const [aliceRegistration] = mitm.sentBy('alice', 'user:register-key');
    assert.ok(isRecord(aliceRegistration));
    const aliceIdentity = await decodePublicIdentityJson(aliceRegistration['identity']);
    const withMallory = await safetyNumber(parseUserId('alice'), aliceIdentity, parseUserId('bob'), mallory.publicIdentity);
    const shown = await shownSafetyNumber(alice, 'Compare safety numbers');
    assert.notEqual(digitsOf(shown), digitsOf(honest));
    assert.equal(digitsOf(shown), withMallory.grouped);
    assert.match(shown, /new key/);

    // Nothing was encrypted for anyone meanwhile, and the trusted identity and session are as
    // they were: Mallory's key is only pending.
    assert.equal(mitm.sentBy('alice', 'message:send').length, sendsBefore);
    const after = await snapshot(alice, 'bob');
    assert.equal(after.session, trusted.session);
    assert.equal(after.counters, trusted.counters);
    const contact = JSON.parse(after.contact) as { identity: unknown; pending: unknown };
    const before = JSON.parse(trusted.contact) as { identity: unknown; pending: unknown };
    assert.deepEqual(contact.identity, before.identity, 'the trusted identity is unchanged');
    assert.equal(before.pending, null);
    assert.notEqual(contact.pending, null, 'the substituted identity is only pending');

    // Bob's real messages still arrive on the honest session.
    await send(bob, 'are you there?');
    await expect(bubble(alice, 'are you there?'), 'honest message during the warning').toBeVisible();
    await expect(alice.getByRole('button', { name: 'Send' }), 'still blocked').toBeDisabled();
  });

  test('a message sealed before a key change is held until the new key is accepted, then sealed for it', async () => {
    const { alice } = await aliceWroteToBob();

    // The relay answers alice's sends with "busy": her browser gives up retrying for now and
    // keeps the message queued, already sealed for bob's real identity.
    mitm.answer = (link, name, _request, answer) =>
      link.user === 'alice' && name === 'message:send' ? { ok: false, error: 'busy', message: 'the relay is busy', retryable: true, retryAfterMs: 10 } : answer;
    const sendsBefore = mitm.sentBy('alice', 'message:send').length;
    await send(alice, 'sealed before the change');
    await mitm.waitFor('alice to stop retrying', () => mitm.sentBy('alice', 'message:send').length >= sendsBefore + 6);
    await sleep(200);
    const attempts = mitm.sentBy('alice', 'message:send');
    assert.equal(attempts.length, sendsBefore + 6, 'five retries, then the message waits');
    const sealed = attempts.at(-1);
    assert.ok(isRecord(sealed));

    // Now the relay claims bob has another identity (Mallory's, with her own bundle). On the
    // next connection the queued envelope must not go out on its own.
    const { bundle, identity: mallory } = await attackerBundle('bob');
    const malloryJson = publicIdentityToJson(mallory.publicIdentity);
    mitm.answer = (link, name, request, answer) => {
      if (link.user !== 'alice' || !isRecord(request) || request['userId'] !== 'bob' || !isRecord(answer)) return answer;
      if (name === 'user:identity') return { ...answer, identity: malloryJson };
      if (name === 'user:request-key') return { ...answer, bundle };
      return answer;
    };
    await alice.reload();
    await online(alice);
    await openConversation(alice, 'bob');
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'key change warning').toBeVisible();
    await sleep(300);
    assert.equal(mitm.sentBy('alice', 'message:send').length, attempts.length, 'the sealed message is held');

    // Accepting the new key from its safety number (the person compared numbers, or chose
    // to) seals it again, for the accepted identity, and sends it.
    await alice.getByRole('button', { name: 'Compare safety numbers' }).click();
    await alice.getByRole('dialog').getByRole('button', { name: 'Accept new key' }).click();
    await mitm.waitFor('the held message to be sent', () => mitm.sentBy('alice', 'message:send').length > attempts.length);
    const resent = mitm.sentBy('alice', 'message:send').at(-1);
    assert.ok(isRecord(resent));
    assert.equal(resent['id'], sealed['id'], 'the same message');
    assert.notDeepEqual(resent['envelope'], sealed['envelope'], 'sealed afresh');
    const status = bubble(alice, 'sealed before the change').locator('[data-status="stored"], [data-status="delivered"]');
    await expect(status, 'stored by the relay').toHaveCount(1);
  });

  test('a prekey message from another identity, pushed while the client asks for the peer’s identity before sealing, is not sealed for', async () => {
    const { alice, bob } = await aliceWroteToBob();
    const mallory = await impostor(mitm.link('bob'), () => mitm.fakeId(), 'bob', 'alice');

    // Alice's next login is answered only once she has written a message: it waits in the
    // outbox, unsealed, and the flush after the login asks for bob's identity before sealing.
    // While alice waits for that answer the relay slips in Mallory's prekey message as bob's,
    // then answers honestly.
    let releaseLogin = (): void => undefined;
    const loginHeld = new Promise<void>((resolve) => (releaseLogin = resolve));
    let injected = false;
    mitm.answer = async (link, name, request, answer) => {
      if (link.user !== 'alice') return answer;
      if (name === 'auth:login') await loginHeld;
      if (name === 'user:identity' && isRecord(request) && request['userId'] === 'bob' && !injected) {
        injected = true;
        link.push([await mallory.write('mallory as bob', 1n, 0n)]);
        await sleep(300);
      }
      return answer;
    };
    const sendsBefore = mitm.sentBy('alice', 'message:send').length;
    const loginsBefore = mitm.sentBy('alice', 'auth:login').length;
    await alice.reload();
    await mitm.waitFor('alice to log in again', () => mitm.sentBy('alice', 'auth:login').length > loginsBefore);
    await openConversation(alice, 'bob');
    await send(alice, 'only for bob');
    releaseLogin();

    await mitm.waitFor('the message to be sent', () => mitm.sentBy('alice', 'message:send').length > sendsBefore);
    assert.ok(injected, 'Mallory’s message was pushed while alice waited for bob’s identity');
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'key change warning').toBeVisible();
    await expect(bubble(alice, 'mallory as bob'), 'Mallory’s message, after the notice').toBeVisible();
    // Sealed for the identity alice had accepted when she sealed it: bob's, never Mallory's.
    const sends = mitm.sentBy('alice', 'message:send').slice(sendsBefore);
    for (const sent of sends) {
      assert.ok(isRecord(sent));
      assert.equal(await mallory.reads(sent['envelope']), false, 'nothing alice sent decrypts for Mallory');
    }
    await expect(bubble(bob, 'only for bob'), 'bob reads it').toBeVisible();
    await expect(undecryptable(bob), 'nothing undecryptable at bob').toHaveCount(0);
    // And nothing more goes out while Mallory's key is pending.
    await sleep(300);
    assert.equal(mitm.sentBy('alice', 'message:send').length, sendsBefore + sends.length);
    await expect(alice.getByRole('button', { name: 'Send' }), 'sending blocked').toBeDisabled();
  });

  test('records from an identity not accepted neither confirm ours nor move the count; accepting it starts the count afresh', async () => {
    const { alice, bob } = await aliceWroteToBob();
    await send(bob, 'hello alice');
    await expect(bubble(alice, 'hello alice'), 'reply at alice').toBeVisible();
    // Alice's next two messages reach the relay and never bob: stored, not delivered.
    const hold = holdMessages('bob', 'alice');
    await send(alice, 'two');
    await send(alice, 'three');
    await hold.next(2);
    const status = (text: string) => bubble(alice, text).locator('[data-status]');
    await expect(status('three'), 'stored by the relay').toHaveAttribute('data-status', 'stored');
    const before = JSON.parse((await snapshot(alice, 'bob')).counters) as Record<string, unknown>;

    // Mallory, as bob, claims to have received every record alice will ever write.
    const mallory = await impostor(mitm.link('bob'), () => mitm.fakeId(), 'bob', 'alice');
    mitm.link('alice').push([await mallory.write('mallory 1', 1n, MAX_U64)]);
    await expect(bubble(alice, 'mallory 1'), 'shown, after the notice').toBeVisible();
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'key change warning').toBeVisible();
    for (const text of ['two', 'three']) await expect(status(text), `${text} still only stored`).toHaveAttribute('data-status', 'stored');
    const after = JSON.parse((await snapshot(alice, 'bob')).counters) as Record<string, unknown>;
    assert.deepEqual({ ...after, lastCounter: null, lastDigest: null }, { ...before, lastCounter: null, lastDigest: null }, 'only what alice’s next record names changed');
    assert.equal(after['lastCounter'], '1n');
    for (const kind of ['missing', 'unconfirmed', 'digest_mismatch']) {
      await expect(alice.locator(`.messages li.notice[data-kind="${kind}"]`), `no ${kind} notice`).toHaveCount(0);
    }

    // Accepted (compared, or not): Mallory's next record, whatever its counter, starts the count.
    await alice.getByRole('button', { name: 'Compare safety numbers' }).click();
    await alice.getByRole('dialog').getByRole('button', { name: 'Accept new key' }).click();
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'warning gone').toHaveCount(0);
    mitm.link('alice').push([await mallory.write('mallory 5', 5n, 0n)]);
    await expect(bubble(alice, 'mallory 5'), 'her next record').toBeVisible();
    await expect(missingNotices(alice), 'no gap before the first counted record').toHaveCount(0);
    const counted = JSON.parse((await snapshot(alice, 'bob')).counters) as { receivedContiguous: string; receivedAbove: unknown[] };
    assert.equal(counted.receivedContiguous, '5n');
    assert.deepEqual(counted.receivedAbove, []);
  });

  test('a send refused as unauthenticated (it reached a new connection before the login) stays queued and goes after the login', async () => {
    const { alice, bob } = await aliceWroteToBob();
    const first = mitm.link('alice');
    let refused = false;
    mitm.answer = (link, name, _request, answer) => {
      if (link.user !== 'alice' || name !== 'message:send' || refused) return answer;
      refused = true;
      // The connection was gone and is back, not yet logged in: the client reconnects.
      setTimeout(() => link.drop(), 100);
      return { ok: false, error: 'unauthenticated', message: 'log in first', retryable: false };
    };
    const sendsBefore = mitm.sentBy('alice', 'message:send').length;
    await send(alice, 'after the login');
    await mitm.waitFor('alice to connect again', () => mitm.linksOf('alice').some((link) => link !== first));
    await online(alice);
    await mitm.waitFor('the message to be sent again', () => mitm.sentBy('alice', 'message:send').length >= sendsBefore + 2);
    const [refusedSend, again] = mitm.sentBy('alice', 'message:send').slice(sendsBefore) as [unknown, unknown];
    assert.ok(isRecord(refusedSend) && isRecord(again));
    assert.equal(again['id'], refusedSend['id'], 'the same message, resent');
    assert.ok(refused);
    await expect(bubble(alice, 'after the login').locator('[data-status="stored"], [data-status="delivered"]'), 'stored, not failed').toHaveCount(1);
    await expect(bubble(bob, 'after the login'), 'at bob, once').toHaveCount(1);
  });

  test('a substituted bundle on a new conversation is refused before anything is encrypted to it', async () => {
    const alice = await user('alice');
    await user('bob');
    const attacker = await attackerBundle('bob');
    let lies = 0;
    mitm.answer = (link, name, request, answer) => {
      if (link.user !== 'alice' || name !== 'user:request-key' || !isRecord(request) || request['userId'] !== 'bob' || !isRecord(answer)) return answer;
      lies++;
      return { ...answer, bundle: attacker.bundle };
    };

    // Bob's identity comes honestly with the conversation (user:identity); the bundle, fetched
    // for the first message, carries Mallory's keys.
    await startConversation(alice, 'bob');
    const trusted = await snapshot(alice, 'bob');
    assert.notEqual(trusted.contact, 'null', 'bob known from his identity');
    await send(alice, 'for bob only');
    await expect(alice.getByRole('alert').filter({ hasText: 'bob’s safety number has changed' }), 'key change warning').toBeVisible();
    assert.ok(lies >= 1, 'the substituted bundle was served');
    await expect(bubble(alice, 'for bob only').locator('[data-status]'), 'held back, not sent').toHaveAttribute('data-status', 'sending');
    await expect(alice.getByLabel('Message', { exact: true }), 'composer blocked').toBeDisabled();
    const shown = await shownSafetyNumber(alice, 'Compare safety numbers');
    const [aliceRegistration] = mitm.sentBy('alice', 'user:register-key');
    assert.ok(isRecord(aliceRegistration));
    const aliceIdentity = await decodePublicIdentityJson(aliceRegistration['identity']);
    assert.equal(digitsOf(shown), (await safetyNumber(parseUserId('alice'), aliceIdentity, parseUserId('bob'), attacker.identity.publicIdentity)).grouped);

    // Nothing left the browser for bob, no session was made with Mallory's keys.
    await sleep(500);
    assert.deepEqual(mitm.sentBy('alice', 'message:send'), []);
    const after = await snapshot(alice, 'bob');
    assert.equal(after.session, 'null', 'no session with the substituted bundle');
    assert.deepEqual((JSON.parse(after.contact) as { identity: unknown }).identity, (JSON.parse(trusted.contact) as { identity: unknown }).identity);
    assert.deepEqual(mitm.pushedTo('bob'), [], 'bob received nothing');
  });

  test('a replayed bundle reuses a spent one-time prekey: the receiver refuses the message, keeps its state', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    const carol = await user('carol');

    // Alice's honest bundle of bob is recorded...
    let recorded: Record<string, unknown> | null = null;
    mitm.answer = (link, name, _request, answer) => {
      if (name !== 'user:request-key' || !isRecord(answer) || !isRecord(answer['bundle'])) return answer;
      if (link.user === 'alice' && recorded === null) recorded = answer['bundle'];
      // ...and replayed to carol.
      if (link.user === 'carol' && recorded !== null) return { ...answer, bundle: recorded };
      return answer;
    };
    await startConversation(alice, 'bob');
    await send(alice, 'hi bob');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'hi bob'), 'alice’s message').toBeVisible();
    const spent = (recorded as Record<string, unknown> | null)?.['oneTimePrekey'];
    assert.ok(isRecord(spent) && typeof spent['id'] === 'number', 'the recorded bundle had a one-time prekey');
    const spentId = spent['id'];
    const beforeCarol = await snapshot(bob, 'carol');
    const withAlice = await snapshot(bob, 'alice');
    assert.ok(!beforeCarol.oneTimePrekeyIds.includes(spentId), 'bob deleted the one-time prekey alice used');

    await startConversation(carol, 'bob');
    await send(carol, 'hi bob, carol here');
    await mitm.waitFor('carol’s message to reach bob', () => mitm.pushedTo('bob', 'carol').length === 1);
    await mitm.waitFor('bob to acknowledge it', () => (mitm.acked.get('bob') ?? []).includes(mitm.pushedTo('bob', 'carol')[0]?.id ?? -1));
    await openConversation(bob, 'carol');
    await expect(undecryptable(bob), 'refused at bob').toHaveCount(1);
    await expect(bubble(bob, 'carol here'), 'never shown').toHaveCount(0);
    const afterCarol = await snapshot(bob, 'carol');
    assert.equal(afterCarol.session, 'null', 'no session on the spent prekey');
    assert.equal(afterCarol.oneTimePrekeys, beforeCarol.oneTimePrekeys, 'no one-time prekey consumed');
    const withAliceAfter = await snapshot(bob, 'alice');
    assert.equal(withAliceAfter.session, withAlice.session, 'alice’s session untouched');

    await send(alice, 'still there?');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'still there?'), 'alice’s session still works').toBeVisible();
  });

  test('flipped bits are shown as undecryptable, change nothing, and the honest copies still decrypt', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    const initial = await snapshot(alice, 'bob');
    const hold = holdMessages('alice', 'bob');
    const link = () => mitm.link('alice');

    await startConversation(bob, 'alice');
    await send(bob, 'first');
    const [first] = (await hold.next(1)) as [PushedMessage];
    assert.ok(first.envelope.prekey !== undefined, 'the first message is a prekey message');

    // A tampered prekey message: refused, and it consumes nothing (no session, no prekey).
    link().push([{ ...first, envelope: flipCiphertextBit(first.envelope, 77) }]);
    await expect(alice.locator('button.conv[data-peer="bob"]'), 'conversation listed').toBeVisible();
    await openConversation(alice, 'bob');
    await expect(undecryptable(alice), 'tampered prekey message').toHaveCount(1);
    await expect(undecryptable(alice), 'shown as such').toContainText('could not be decrypted');
    const afterTamperedPrekey = await snapshot(alice, 'bob');
    assert.equal(afterTamperedPrekey.session, initial.session, 'no session from a tampered prekey message');
    assert.equal(afterTamperedPrekey.oneTimePrekeys, initial.oneTimePrekeys, 'no one-time prekey consumed');
    assert.equal(afterTamperedPrekey.counters, JSON.stringify({ lastCounter: '0n', lastDigest: '0'.repeat(64), peerReceived: '0n', receivedAbove: [], receivedContiguous: '0n', sent: '0n' }));

    // The honest copy (filed anew by the relay) still decrypts.
    link().push([{ ...first, id: mitm.fakeId() }]);
    await expect(bubble(alice, 'first'), 'honest prekey message').toBeVisible();
    const established = await snapshot(alice, 'bob');
    assert.notEqual(established.session, 'null');
    assert.equal(established.oneTimePrekeys, initial.oneTimePrekeys - 1);

    // A bit flipped in an ordinary message, then a header pushed 500 keys ahead: both refused,
    // neither moves the ratchet, adds skipped keys or counts.
    await send(bob, 'second');
    await send(bob, 'third');
    const [second, third] = (await hold.next(2)) as [PushedMessage, PushedMessage];
    link().push([{ ...second, envelope: flipCiphertextBit(second.envelope, 8 * 64 + 3) }]);
    await expect(undecryptable(alice), 'tampered ciphertext').toHaveCount(2);
    assert.deepEqual(await snapshot(alice, 'bob'), established);
    link().push([{ ...third, envelope: withHeader(third.envelope, { n: third.envelope.header.n + 500 }) }]);
    await expect(undecryptable(alice), 'tampered header').toHaveCount(3);
    assert.deepEqual(await snapshot(alice, 'bob'), established);
    await expect(missingNotices(alice), 'no gap yet').toHaveCount(0);

    // The next honest message decrypts; the one whose content never came is reported missing.
    await send(bob, 'fourth');
    const [fourth] = (await hold.next(1)) as [PushedMessage];
    link().push([fourth]);
    await expect(bubble(alice, 'fourth'), 'honest message after tampering').toBeVisible();
    await expect(missingNotices(alice), 'the tampered ones are missing').toHaveCount(1);
    await expect(missingNotices(alice), 'how many').toContainText('2 messages from bob are missing');

    // And the honest copies of the tampered ones, filed anew, still decrypt (their keys were kept).
    link().push([{ ...second, id: mitm.fakeId() }, { ...third, id: mitm.fakeId() }]);
    await expect(bubble(alice, 'second'), 'honest second').toBeVisible();
    await expect(bubble(alice, 'third'), 'honest third').toBeVisible();
    await expect(alice.locator('.messages li.msg.in[data-kind="text"]'), 'each text once').toHaveCount(4);
    await expect(undecryptable(alice), 'still three refused').toHaveCount(3);
    await expect(missingNotices(alice), 'nothing missing any more').toHaveCount(0);
    const counters = JSON.parse((await snapshot(alice, 'bob')).counters) as { receivedContiguous: string; receivedAbove: unknown[] };
    assert.equal(counters.receivedContiguous, '4n');
    assert.deepEqual(counters.receivedAbove, []);
  });

  test('replayed messages are not shown twice, whether refiled with a new id or pushed again', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    await startConversation(bob, 'alice');
    await send(bob, 'one');
    await send(bob, 'two');
    await expect(alice.locator('button.conv[data-peer="bob"]'), 'conversation listed').toBeVisible();
    await openConversation(alice, 'bob');
    await expect(bubble(alice, 'two'), 'both arrived').toBeVisible();
    await mitm.waitFor('both acknowledged', () => (mitm.acked.get('alice') ?? []).length >= 2);
    const [one, two] = mitm.pushedTo('alice', 'bob') as [PushedMessage, PushedMessage];
    const settled = await snapshot(alice, 'bob');

    // The prekey message and the ordinary one again: under new ids, under the same id, and
    // twice in one push.
    const replays = [
      { ...one, id: mitm.fakeId() },
      { ...two, id: mitm.fakeId() },
      two,
      { ...one, id: mitm.fakeId() },
    ];
    mitm.link('alice').push(replays);
    mitm.link('alice').push([{ ...two, id: mitm.fakeId() }, two]);
    const replayIds = replays.map((m) => m.id).filter((id) => id !== two.id);
    await mitm.waitFor('the replays to be dealt with and acknowledged', () => replayIds.every((id) => (mitm.acked.get('alice') ?? []).includes(id)));
    await sleep(300);
    await expect(bubble(alice, 'one'), 'one, once').toHaveCount(1);
    await expect(bubble(alice, 'two'), 'two, once').toHaveCount(1);
    await expect(undecryptable(alice), 'replays are dropped silently').toHaveCount(0);
    await expect(missingNotices(alice), 'no notices').toHaveCount(0);
    assert.deepEqual(await snapshot(alice, 'bob'), settled, 'replays change nothing');

    // After a reply bob ratchets to a new chain; a replay from the old chain is still dropped.
    await send(alice, 'got them');
    await expect(bubble(bob, 'got them'), 'reply').toBeVisible();
    await send(bob, 'three');
    await expect(bubble(alice, 'three'), 'new chain').toBeVisible();
    const now = await snapshot(alice, 'bob');
    const late = { ...two, id: mitm.fakeId() };
    mitm.link('alice').push([late]);
    await mitm.waitFor('the late replay to be acknowledged', () => (mitm.acked.get('alice') ?? []).includes(late.id));
    await sleep(300);
    await expect(alice.locator('.messages li.msg.in'), 'three messages, each once').toHaveCount(3);
    await expect(bubble(alice, 'two'), 'two still once').toHaveCount(1);
    assert.deepEqual(await snapshot(alice, 'bob'), now, 'the old-chain replay changes nothing');
  });

  test('a sender named in another spelling is the same sender: one message pushed twice at once is shown once', async () => {
    const { alice, bob } = await aliceWroteToBob();
    const { next } = holdMessages('bob', 'alice');
    await send(alice, 'only once');
    const [message] = (await next(1)) as [PushedMessage];
    const settled = await snapshot(bob, 'alice');

    // The same new message twice in one push, under two spellings of alice's id: both must
    // wait for the same session, so the second finds the first's work and is dropped.
    const copies = [
      { ...message, from: 'ALICE', id: mitm.fakeId() },
      { ...message, from: 'Alice', id: mitm.fakeId() },
    ];
    mitm.link('bob').push(copies);
    await mitm.waitFor('both copies acknowledged', () => copies.every((m) => (mitm.acked.get('bob') ?? []).includes(m.id)));
    await sleep(300);
    await expect(bubble(bob, 'only once'), 'shown once').toHaveCount(1);
    await expect(undecryptable(bob), 'the copy is dropped silently').toHaveCount(0);
    assert.notDeepEqual(await snapshot(bob, 'alice'), settled, 'the message moved the session on');

    // The session is whole: the real push and a reply still go through.
    mitm.link('bob').push([message]);
    await send(bob, 'got it');
    await expect(bubble(alice, 'got it'), 'reply').toBeVisible();
    await expect(bubble(bob, 'only once'), 'still once').toHaveCount(1);
  });

  test('a connection the relay ends is opened again by the client, and what came meanwhile arrives', async () => {
    const { alice, bob } = await aliceWroteToBob();
    const before = mitm.link('bob');
    before.disconnectAsRelay();
    await send(alice, 'while bob was away');
    await mitm.waitFor('bob to connect again', () => mitm.linksOf('bob').some((link) => link !== before));
    await online(bob);
    await expect(bubble(bob, 'while bob was away'), 'caught up').toBeVisible();
    await send(bob, 'back');
    await expect(bubble(alice, 'back'), 'and sending again').toBeVisible();
  });

  test('a time no Date can hold, from the relay, neither breaks the conversation nor hides what follows', async () => {
    const { alice, bob } = await aliceWroteToBob();
    const { next } = holdMessages('bob', 'alice');
    await send(alice, 'tampered on the way');
    const [held] = (await next(1)) as [PushedMessage];
    // The relay files a tampered copy with a receive time far past what a Date holds.
    const tampered = { ...held, id: mitm.fakeId(), receivedAt: 9_000_000_000_000_000, envelope: flipCiphertextBit(held.envelope, 8 * 64 + 3) };
    mitm.link('bob').push([tampered]);
    await expect(undecryptable(bob), 'the tampered copy, shown as such').toHaveCount(1);
    // The honest copy and a later message still render in that conversation.
    mitm.link('bob').push([held]);
    await expect(bubble(bob, 'tampered on the way'), 'the honest copy').toBeVisible();
    await send(bob, 'still here');
    await expect(bubble(alice, 'still here'), 'reply').toBeVisible();
  });

  test('two withheld messages out of five are reported missing when a later one arrives', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    // The relay swallows bob's 3rd and 4th message to alice and acknowledges them itself.
    let count = 0;
    const withheld: number[] = [];
    mitm.deliver = (link, message) => {
      if (link.user !== 'alice' || message.from !== 'bob') return [message];
      count++;
      if (count !== 3 && count !== 4) return [message];
      withheld.push(message.id);
      void link.ackOnBehalf([message.id]).catch((error: unknown) => mitm.fail(error));
      return [];
    };
    await startConversation(bob, 'alice');
    for (const n of [1, 2, 3, 4]) await send(bob, `message ${n}`);
    await expect(alice.locator('button.conv[data-peer="bob"]'), 'conversation listed').toBeVisible();
    await openConversation(alice, 'bob');
    await expect(bubble(alice, 'message 2'), 'second arrives').toBeVisible();
    await mitm.waitFor('two withheld', () => withheld.length === 2);
    await expect(missingNotices(alice), 'nothing noticed before a later message').toHaveCount(0);

    await send(bob, 'message 5');
    await expect(bubble(alice, 'message 5'), 'fifth arrives').toBeVisible();
    await expect(missingNotices(alice), 'missing notice').toHaveCount(1);
    await expect(missingNotices(alice), 'missing notice text').toContainText('2 messages from bob are missing');
    await expect(alice.locator('.messages li.msg.in'), 'three shown').toHaveCount(3);
    await expect(bubble(alice, 'message 3'), 'third never shown').toHaveCount(0);
    // The relay told bob they were delivered: the lie is only visible from alice's side.
    await expect(bubble(bob, 'message 3').locator('[data-status]'), 'relay claims delivered').toHaveAttribute('data-status', 'delivered');
  });

  test('messages reordered and delayed all decrypt and are shown once', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    const hold = holdMessages('alice', 'bob');
    const link = () => mitm.link('alice');

    await startConversation(bob, 'alice');
    for (const n of [1, 2, 3, 4, 5]) await send(bob, `r${n}`);
    const first = await hold.next(5);
    const at = (n: number): PushedMessage => {
      const m = first[n - 1];
      if (m === undefined) throw new Error(`no message ${n}`);
      return m;
    };
    // The third (a prekey message, like all before a reply) starts the session; the others
    // come from skipped keys, out of order, one at a time.
    for (const n of [3, 1, 5, 2, 4]) {
      link().push([at(n)]);
      await sleep(250);
    }
    await expect(alice.locator('button.conv[data-peer="bob"]'), 'conversation listed').toBeVisible();
    await openConversation(alice, 'bob');
    for (const n of [1, 2, 3, 4, 5]) await expect(bubble(alice, `r${n}`), `r${n} once`).toHaveCount(1);

    // After a reply, a new chain: the last first, then two delayed in one push.
    await send(alice, 'reply');
    await expect(bubble(bob, 'reply'), 'reply at bob').toBeVisible();
    for (const n of [6, 7, 8]) await send(bob, `r${n}`);
    const [r6, r7, r8] = (await hold.next(3)) as [PushedMessage, PushedMessage, PushedMessage];
    link().push([r8]);
    await expect(bubble(alice, 'r8'), 'r8 first').toBeVisible();
    await expect(missingNotices(alice), 'a gap while two are late').toContainText('2 messages from bob are missing');
    await sleep(1500);
    link().push([r7, r6]);
    for (const n of [6, 7, 8]) await expect(bubble(alice, `r${n}`), `r${n} once`).toHaveCount(1);
    await expect(alice.locator('.messages li.msg.in'), 'eight messages, each once').toHaveCount(8);
    await expect(undecryptable(alice), 'nothing refused').toHaveCount(0);
    // The notice that counted the late ones goes once they are there.
    await expect(missingNotices(alice), 'nothing reported missing once all arrived').toHaveCount(0);
    const state = await snapshot(alice, 'bob');
    const counters = JSON.parse(state.counters) as { receivedContiguous: string; receivedAbove: unknown[] };
    assert.equal(counters.receivedContiguous, '8n');
    assert.deepEqual(counters.receivedAbove, []);
  });
});
