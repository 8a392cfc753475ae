/**
 * End-to-end tests of the web client in headless Chromium against the real relay: two people
 * chatting both ways, delivery marks, unread counts, safety numbers, a browser closed while
 * messages arrive, a reload, a long conversation shown a page at a time, a key change, a
 * withheld message and the connection banner.
 * Every page must finish without a console error. Screenshots of the main screens are saved
 * on the way (test/harness/browser.ts says where).
 *
 * Needs `$SOTTO_BIN` and Chromium (`$CHROMIUM`, default /usr/bin/chromium).
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { promisify } from 'node:util';

import Database from 'better-sqlite3';
import type { Page } from 'playwright-core';

import { toBase64Url } from '../../src/protocol/bytes.js';
import { generateIdentity, type IdentityKeyPair } from '../../src/protocol/identity.js';
import { generateSignedPrekey, type SignedPrekey } from '../../src/protocol/prekeys.js';
import { noDigest, textRecord } from '../../src/protocol/record.js';
import { emptySessionRecord, initiateSession, promoteSession, sessionRecordEncrypt } from '../../src/protocol/session.js';
import { parseUserId } from '../../src/protocol/userId.js';
import { decodeBundleJson, envelopeToJson } from '../../src/protocol/wire.js';
import { RelayConnection } from '../../src/transport/relay.js';
import { Profile, screenshot } from '../harness/browser.js';
import { eventually, expect } from '../harness/expect.js';
import { type PageServer, pageFor } from '../harness/page.js';
import { type Relay, sottoBin, startRelay } from '../harness/relay.js';
import { bubble, online, openConversation, register, send, startConversation } from '../harness/ui.js';

const run = promisify(execFile);

/** Whether the bubble showing `text` is inside the visible part of the message log. */
function onScreen(page: Page, text: string): Promise<boolean> {
  return page.evaluate((wanted) => {
    const log = document.querySelector('.messages');
    const item = Array.from(document.querySelectorAll('.messages li.msg')).find((li) => li.textContent?.includes(wanted));
    if (log === null || item === undefined) return false;
    const box = log.getBoundingClientRect();
    const at = item.getBoundingClientRect();
    return at.bottom > box.top && at.top < box.bottom;
  }, text);
}

/** Scrolls the open conversation's message log to its top or its bottom, as a reader would. */
function scrollLog(page: Page, to: 'top' | 'bottom'): Promise<void> {
  return page.evaluate((to) => {
    const log = document.querySelector('.messages');
    if (log !== null) log.scrollTop = to === 'top' ? 0 : log.scrollHeight;
  }, to);
}

describe('web client in Chromium', () => {
  let relay: Relay;
  let page: PageServer;
  let profiles: Profile[] = [];

  const profile = async (): Promise<Profile> => {
    const p = await Profile.create();
    profiles.push(p);
    return p;
  };

  /** Registers `name` from this process (no browser, no one-time prekeys) and returns its connection. */
  const registerFromNode = async (name: string): Promise<{ connection: RelayConnection; signed: SignedPrekey; identity: IdentityKeyPair }> => {
    const identity = await generateIdentity();
    const signed = await generateSignedPrekey(identity, 1, Math.floor(Date.now() / 1000));
    const connection = new RelayConnection({ url: relay.url, host: relay.host, transports: ['websocket'], reconnect: false });
    const connected = new Promise<void>((resolve) => connection.socket.once('connect', () => resolve()));
    connection.open();
    await connected;
    const signedJson = { id: 1, key: toBase64Url(signed.keyPair.publicKey), createdAt: signed.createdAt, signature: toBase64Url(signed.signature) };
    await connection.register(parseUserId(name), identity, signedJson, []);
    return { connection, signed, identity };
  };

  /**
   * `name`, registered from this process, writing text records to `to` through the relay (a
   * session started with `to`'s bundle, counters from 1 as a client numbers them): many
   * messages in far less time than typing them in a browser.
   */
  const writerFromNode = async (name: string, to: string): Promise<{ write(text: string): Promise<void>; close(): void }> => {
    const { connection, identity } = await registerFromNode(name);
    const bundle = await decodeBundleJson(await connection.requestBundle(to));
    let state = promoteSession(emptySessionRecord(), await initiateSession({ userId: parseUserId(name), identity }, parseUserId(to), bundle));
    let counter = 0n;
    return {
      async write(text) {
        counter++;
        const sealed = await sessionRecordEncrypt(state, textRecord(text, { sentAt: BigInt(Date.now()), counter, lastReceivedCounter: 0n, lastReceivedDigest: noDigest() }));
        state = sealed.state;
        await connection.send({ to, id: `${name}-${counter}`, envelope: envelopeToJson(sealed.envelope) });
      },
      close: () => connection.close(),
    };
  };

  beforeEach(async () => {
    relay = await startRelay();
    page = await pageFor(relay);
    profiles = [];
  });

  afterEach(async () => {
    const errors = profiles.flatMap((p) => p.errors);
    for (const p of profiles) await p.dispose();
    await page.close();
    await relay.dispose();
    assert.deepEqual(errors, [], 'no console errors on any page');
  });

  test('two people chat both ways, with delivery marks, unread counts and safety numbers', async () => {
    const alice = await (await profile()).open();
    await alice.goto(page.origin);
    assert.equal(await alice.title(), 'Sotto');
    await expect(alice.getByLabel('User id', { exact: true }), 'registration form').toBeVisible();
    await screenshot(alice, '01-registration');

    // Validation happens before any key is made.
    await alice.getByLabel('User id', { exact: true }).fill('A');
    await alice.getByRole('button', { name: 'Create my identity' }).click();
    await expect(alice.getByRole('alert').filter({ hasText: '2 to 32 characters' }), 'invalid id error').toBeVisible();

    await register(alice, page.origin, 'alice');
    const bob = await (await profile()).open();
    // A taken id is refused; the keys made for it are forgotten and another id can be chosen.
    await bob.goto(page.origin);
    await bob.getByLabel('User id', { exact: true }).fill('alice');
    await bob.getByRole('button', { name: 'Create my identity' }).click();
    await expect(bob.getByRole('alert').filter({ hasText: 'taken' }), 'user id taken').toBeVisible();
    await register(bob, page.origin, 'bob');

    // Unknown users are refused up front.
    await alice.getByLabel('Start a conversation').fill('nobody');
    await alice.getByRole('button', { name: 'Start', exact: true }).click();
    await expect(alice.getByRole('alert').filter({ hasText: 'no user “nobody”' }), 'unknown user error').toBeVisible();

    await startConversation(alice, 'bob');
    await send(alice, 'Hi Bob! This is end-to-end encrypted.');
    await expect(bubble(alice, 'Hi Bob!').locator('[data-status]'), 'stored or delivered').toBeVisible();

    // Bob sees an unread conversation, opens it, replies.
    const bobsEntry = bob.locator('button.conv[data-peer="alice"]');
    await expect(bobsEntry.locator('.badge'), 'unread badge').toContainText('1');
    await screenshot(bob, '02-conversation-list');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'Hi Bob!'), 'message at bob').toBeVisible();
    await expect(bobsEntry.locator('.badge'), 'unread badge cleared').toHaveCount(0);
    await send(bob, 'Hello Alice — got it.');
    await send(bob, 'Shall we compare safety numbers?');

    await expect(bubble(alice, 'got it'), 'reply at alice').toBeVisible();
    await expect(bubble(alice, 'compare safety numbers'), 'second reply at alice').toBeVisible();
    // Alice's message was acknowledged by Bob's browser: delivered.
    await expect(bubble(alice, 'Hi Bob!').locator('[data-status]'), 'delivered').toHaveAttribute('data-status', 'delivered');
    await expect(bubble(bob, 'compare safety numbers').locator('[data-status]'), 'delivered at bob').toHaveAttribute('data-status', 'delivered');
    // A message too large for one record is refused with a clear error, and kept in the field.
    const field = alice.getByLabel('Message', { exact: true });
    await field.fill('x'.repeat(40_000));
    await field.press('Enter');
    await expect(alice.getByRole('alert').filter({ hasText: 'too large' }), 'too large error').toBeVisible();
    await field.fill('');
    await send(alice, 'Sure, opening the panel.');
    await expect(bubble(bob, 'opening the panel'), 'third at bob').toBeVisible();
    await screenshot(alice, '03-conversation');

    // Both see the same safety number; marking verified shows in the header.
    const digits = async (p: Page): Promise<string> => {
      await p.getByRole('button', { name: 'Safety number' }).click();
      const group = p.getByRole('dialog').locator('.digits');
      await expect(group, 'safety number digits').toBeVisible();
      return (await group.getAttribute('data-digits')) ?? '';
    };
    const aliceDigits = await digits(alice);
    const bobDigits = await digits(bob);
    assert.match(aliceDigits, /^(\d{5} ){11}\d{5}$/);
    assert.equal(aliceDigits, bobDigits);
    await expect(alice.getByRole('img', { name: /QR code of the safety number/ }), 'QR code').toBeVisible();
    await screenshot(alice, '04-safety-number');
    await alice.getByRole('button', { name: 'Mark as verified' }).click();
    await expect(alice.getByRole('dialog').locator('.verify-state'), 'verified state').toContainText('verified');
    await alice.getByRole('button', { name: 'Close' }).click();
    await expect(alice.locator('.conv-header .verified'), 'verified mark').toBeVisible();

    // Narrow screens show one pane at a time.
    await alice.setViewportSize({ width: 390, height: 760 });
    await expect(alice.getByRole('button', { name: 'Back to conversations' }), 'back button').toBeVisible();
    await screenshot(alice, '05-conversation-narrow');
    await alice.getByRole('button', { name: 'Back to conversations' }).click();
    await expect(alice.getByLabel('Start a conversation'), 'list on narrow screens').toBeVisible();
  });

  test('messages sent while a browser is closed arrive when it reopens; a reload keeps identity and history', async () => {
    const aliceProfile = await profile();
    const bobProfile = await profile();
    const alice = await aliceProfile.open();
    await register(alice, page.origin, 'alice');
    let bob = await bobProfile.open();
    await register(bob, page.origin, 'bob');
    await startConversation(alice, 'bob');
    await send(alice, 'first, while you are here');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'first, while you are here'), 'first message').toBeVisible();

    await bobProfile.close();
    await send(alice, 'second, while your browser is closed');
    await send(alice, 'third, still closed');
    await expect(bubble(alice, 'third, still closed').locator('[data-status]'), 'stored').toHaveAttribute('data-status', 'stored');

    bob = await bobProfile.open();
    await bob.goto(page.origin);
    await online(bob);
    await expect(bob.locator('.me'), 'same identity after reopening').toContainText('bob');
    await expect(bob.locator('button.conv[data-peer="alice"] .badge'), 'two unread').toContainText('2');
    await screenshot(bob, '02b-reopened-unread');
    await openConversation(bob, 'alice');
    for (const text of ['first, while you are here', 'second, while your browser is closed', 'third, still closed']) {
      await expect(bubble(bob, text), text).toBeVisible();
    }
    await expect(bubble(alice, 'third, still closed').locator('[data-status]'), 'delivered once reopened').toHaveAttribute('data-status', 'delivered');

    // A reload: same identity, same history, nothing shown twice.
    await bob.reload();
    await online(bob);
    await openConversation(bob, 'alice');
    await expect(bob.locator('.messages li.msg'), 'history after reload').toHaveCount(3);
    await send(bob, 'back after a reload');
    await expect(bubble(alice, 'back after a reload'), 'reply after reload').toBeVisible();
    await expect(bob.locator('.messages li.msg'), 'nothing twice').toHaveCount(4);

    // A second tab on the same identity stays out of the way (it would share the sessions).
    const second = await bobProfile.context?.newPage();
    assert.ok(second !== undefined);
    await second.goto(page.origin);
    await expect(second.getByRole('alert').filter({ hasText: 'already open in another tab' }), 'second tab refused').toBeVisible();
    await second.close();
  });

  test('a long conversation opens at its newest 100 messages; earlier ones are shown on request and stay while more arrive', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    const bob = await (await profile()).open();
    await register(bob, page.origin, 'bob');
    await startConversation(alice, 'bob');
    for (let i = 1; i <= 120; i++) await send(alice, `note ${i}.`);
    // All of them in before the conversation opens (opened earlier, it would follow them at the
    // bottom and show the newest page too, but this is about opening).
    await expect(bob.locator('button.conv[data-peer="alice"] .badge'), '120 unread').toContainText('120');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'note 120.'), 'the newest').toBeVisible();
    const shown = bob.locator('.messages li.msg');
    const earlier = bob.getByRole('button', { name: 'Show earlier messages' });
    await expect(shown, 'one page').toHaveCount(100);
    await expect(bubble(bob, 'note 21.'), 'the oldest of the page').toHaveCount(1);
    await expect(bubble(bob, 'note 20.'), 'older ones not shown').toHaveCount(0);
    await earlier.click(); // scrolled up to the button first, so the page's oldest is on screen
    await expect(shown, 'all of them').toHaveCount(120);
    await expect(bubble(bob, 'note 1.'), 'the first').toHaveCount(1);
    await expect(earlier, 'nothing earlier left').toHaveCount(0);
    // The 20 earlier ones went in above what the reader was looking at, which stays in place.
    assert.equal(await onScreen(bob, 'note 21.'), true, 'the reader keeps their place');
    assert.equal(await onScreen(bob, 'note 1.'), false, 'the earlier ones are above, out of view');
    // Arrivals add at the bottom; nothing leaves the top while the reader is scrolled up.
    await send(alice, 'note 121.');
    await expect(shown, 'still all of them').toHaveCount(121);
    // Opened again, the conversation starts at its newest page again.
    await alice.reload();
    await online(alice);
    await openConversation(alice, 'bob');
    await expect(alice.locator('.messages li.msg'), 'the sender sees one page too').toHaveCount(100);
  });

  test('an open conversation followed at the bottom stays at its newest 100 as messages arrive; scrolled up, nothing on screen is taken away', async () => {
    const bob = await (await profile()).open();
    await register(bob, page.origin, 'bob');
    const carol = await writerFromNode('carol', 'bob');
    await carol.write('carol 1.');
    await openConversation(bob, 'carol');
    await expect(bubble(bob, 'carol 1.'), 'the first').toBeVisible();
    const shown = bob.locator('.messages li.msg');
    const earlier = bob.getByRole('button', { name: 'Show earlier messages' });

    // The most messages the log ever held, counted on every change of it (not only at the end).
    await bob.evaluate(() => {
      const log = document.querySelector('.messages');
      if (log === null) throw new Error('no message log');
      const seen = window as unknown as { mostShown: number };
      seen.mostShown = 0;
      new MutationObserver(() => {
        seen.mostShown = Math.max(seen.mostShown, log.querySelectorAll('li.msg').length);
      }).observe(log, { childList: true });
    });
    const mostShown = (): Promise<number> => bob.evaluate(() => (window as unknown as { mostShown: number }).mostShown);

    // A busy conversation, followed at the bottom: 150 more arrive while it is open.
    for (let i = 2; i <= 151; i++) await carol.write(`carol ${i}.`);
    await expect(bubble(bob, 'carol 151.'), 'the newest').toBeVisible();
    assert.equal(await onScreen(bob, 'carol 151.'), true, 'the newest on screen: still following');
    await expect(shown, 'back to one page').toHaveCount(100);
    const most = await mostShown();
    assert.ok(most <= 100 + 5, `at most a page (and a few) at any time, not every arrival: ${most}`);
    await expect(bubble(bob, 'carol 52.'), 'the oldest of the newest page').toHaveCount(1);
    await expect(bubble(bob, 'carol 51.'), 'older ones trimmed').toHaveCount(0);
    await expect(earlier, 'what was trimmed is offered again').toHaveCount(1);

    // Scrolled up to the top of the page: arrivals are added below and take nothing away.
    await scrollLog(bob, 'top');
    assert.equal(await onScreen(bob, 'carol 52.'), true, 'reading the oldest of the page');
    for (let i = 152; i <= 171; i++) await carol.write(`carol ${i}.`);
    await expect(bubble(bob, 'carol 171.'), 'arrived while scrolled up').toHaveCount(1);
    await expect(shown, 'nothing taken away').toHaveCount(120);
    assert.equal(await onScreen(bob, 'carol 52.'), true, 'the reader keeps their place');
    assert.equal(await onScreen(bob, 'carol 171.'), false, 'no jump to the newest');

    // Back at the bottom, the next arrival trims again.
    await scrollLog(bob, 'bottom');
    await carol.write('carol 172.');
    await expect(bubble(bob, 'carol 172.'), 'the newest').toBeVisible();
    await expect(shown, 'one page again').toHaveCount(100);
    await expect(bubble(bob, 'carol 72.'), 'older ones trimmed again').toHaveCount(0);
    assert.equal(await onScreen(bob, 'carol 172.'), true, 'following again');
    // What was trimmed is still there for the asking.
    await earlier.click();
    await expect(shown, 'the trimmed ones back').toHaveCount(172);
    carol.close();
  });

  test('a message saved but not acknowledged (ack lost) is pushed again and not shown twice', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    const bobProfile = await profile();
    let bob = await bobProfile.open();
    await register(bob, page.origin, 'bob');
    await bobProfile.close();

    // Bob's browser reopens with every `message:ack` it sends dropped on the wire: the relay
    // keeps the messages queued, as if the browser had closed between saving and acknowledging.
    bob = await bobProfile.open();
    let dropped = 0;
    await bobProfile.context?.routeWebSocket(/\/socket\.io\//, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((message) => {
        if (typeof message === 'string' && /^42\d*\["message:ack"/.test(message)) dropped++;
        else server.send(message);
      });
    });
    await startConversation(alice, 'bob');
    await send(alice, 'saved, but the ack is lost');
    await bob.goto(page.origin);
    await online(bob);
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'the ack is lost'), 'received').toBeVisible();
    assert.ok(dropped > 0, 'an acknowledgement was sent (and dropped)');
    await expect(bubble(alice, 'the ack is lost').locator('[data-status]'), 'not delivered').toHaveAttribute('data-status', 'stored');

    // A fresh start without the interference: the relay pushes the message again; Bob's
    // browser recognises it, shows it once, and acknowledges it this time.
    await bobProfile.close();
    bob = await bobProfile.open();
    await bob.goto(page.origin);
    await online(bob);
    await openConversation(bob, 'alice');
    await expect(bubble(alice, 'the ack is lost').locator('[data-status]'), 'delivered now').toHaveAttribute('data-status', 'delivered');
    await expect(bob.locator('.messages li.msg'), 'shown once').toHaveCount(1);
  });

  test('a key change shows a warning and blocks sending until accepted', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    const oldBob = await profile();
    let bob = await oldBob.open();
    await register(bob, page.origin, 'bob');
    await startConversation(alice, 'bob');
    await send(alice, 'hello old bob');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'hello old bob'), 'first at bob').toBeVisible();
    await oldBob.dispose();

    // Bob lost his browser: the operator frees his id and he registers again, new keys.
    await run(sottoBin(), ['admin', 'release-user', '--database', `sqlite:${relay.dbPath}`, 'bob']);
    bob = await (await profile()).open();
    await register(bob, page.origin, 'bob');
    await startConversation(bob, 'alice');
    await send(bob, 'it is me, on a new laptop');

    // Receiving from the new identity shows the warning; sending is blocked.
    await openConversation(alice, 'bob');
    await expect(alice.getByRole('alert').filter({ hasText: 'safety number has changed' }), 'key change warning').toBeVisible();
    await expect(bubble(alice, 'new laptop'), 'message from the new identity').toBeVisible();
    await expect(alice.getByLabel('Message', { exact: true }), 'composer blocked').toBeDisabled();
    await expect(alice.getByRole('button', { name: 'Send' }), 'send blocked').toBeDisabled();
    await screenshot(alice, '06-key-change-warning');

    // The new safety number can be compared first; then accept.
    await alice.getByRole('button', { name: 'Compare safety numbers' }).click();
    await expect(alice.getByRole('dialog').locator('.verify-state'), 'new key note').toContainText('new key');
    await expect(alice.getByRole('alert').getByRole('button', { name: 'Accept new key' }), 'not from the banner').toHaveCount(0);
    await alice.getByRole('dialog').getByRole('button', { name: 'Accept new key' }).click();
    await expect(alice.getByRole('dialog'), 'closed once accepted').toBeHidden();
    await expect(alice.getByLabel('Message', { exact: true }), 'composer unblocked').toBeEnabled();
    await send(alice, 'welcome back, new bob');
    await expect(bubble(bob, 'welcome back, new bob'), 'reply reaches the new identity').toBeVisible();
  });

  test('a withheld message is reported as missing', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    const bobProfile = await profile();
    let bob = await bobProfile.open();
    await register(bob, page.origin, 'bob');
    await bobProfile.close();

    await startConversation(alice, 'bob');
    for (const text of ['one', 'two', 'three']) await send(alice, `message ${text}`);
    await expect(bubble(alice, 'message three').locator('[data-status]'), 'stored').toHaveAttribute('data-status', 'stored');

    // The relay "loses" the middle one.
    const db = new Database(relay.dbPath);
    const rows = db.prepare('SELECT id FROM messages WHERE recipient = ? ORDER BY id').all('bob') as { id: number }[];
    assert.equal(rows.length, 3);
    db.prepare('DELETE FROM messages WHERE id = ?').run(rows[1]?.id);
    db.close();

    bob = await bobProfile.open();
    await bob.goto(page.origin);
    await online(bob);
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'message three'), 'third arrives').toBeVisible();
    await expect(bob.locator('.messages li.notice[data-kind="missing"]'), 'missing notice').toContainText('1 message from alice is missing');
    await expect(bob.locator('.messages li.msg'), 'only two arrived').toHaveCount(2);
    await screenshot(bob, '07-missing-message');
  });

  test('a message the relay calls delivered but the peer never got is pointed out', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    const bobProfile = await profile();
    let bob = await bobProfile.open();
    await register(bob, page.origin, 'bob');
    await bobProfile.close();
    await startConversation(alice, 'bob');
    await send(alice, 'this one will be swallowed');
    await expect(bubble(alice, 'swallowed').locator('[data-status]'), 'stored').toHaveAttribute('data-status', 'stored');

    // The relay drops it and claims it was acknowledged (it keeps nothing of a delivered message).
    const db = new Database(relay.dbPath);
    db.prepare("DELETE FROM messages WHERE recipient = 'bob'").run();
    db.close();
    await alice.reload();
    await online(alice);
    await openConversation(alice, 'bob');
    await expect(bubble(alice, 'swallowed').locator('[data-status]'), 'relay says delivered').toHaveAttribute('data-status', 'delivered');

    // Bob writes later (his clock ten minutes on): his record says he received nothing of Alice's.
    bob = await bobProfile.open();
    await bob.clock.setFixedTime(Date.now() + 10 * 60 * 1000);
    await bob.goto(page.origin);
    await online(bob);
    await startConversation(bob, 'alice');
    await send(bob, 'did you write to me?');
    await expect(bubble(alice, 'did you write to me?'), 'bob’s message').toBeVisible();
    await expect(alice.locator('.messages li.notice[data-kind="unconfirmed"]'), 'unconfirmed notice').toContainText('never arrived');
    await screenshot(alice, '09-unconfirmed-notice');
  });

  test('a message that cannot be decrypted is shown as such, acknowledged and not shown again', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');

    // Mallory is a registered user whose client sends a well-shaped envelope of garbage.
    const { connection: mallory, signed } = await registerFromNode('mallory');
    const garbage = { version: 1, suite: 1, header: { dh: toBase64Url(signed.keyPair.publicKey), pn: 0, n: 0 }, ciphertext: 'A'.repeat(107) };
    // Listening before sending: the receipt can arrive in the same read as the send's answer.
    const acked = new Promise<void>((resolve) => mallory.socket.once('message:delivered', () => resolve()));
    const sent = await mallory.send({ to: 'alice', id: 'garbage-1', envelope: garbage });

    await openConversation(alice, 'mallory');
    await expect(alice.locator('.messages li[data-kind="undecryptable"]'), 'undecryptable shown').toContainText('could not be decrypted');
    await acked; // acknowledged like any message: the sender learns nothing about why
    const statuses = await mallory.status([sent.id]);
    assert.deepEqual(statuses, [{ id: sent.id, status: 'delivered' }]);
    mallory.close();

    await alice.reload();
    await online(alice);
    await openConversation(alice, 'mallory');
    await expect(alice.locator('.messages li[data-kind="undecryptable"]'), 'shown once').toHaveCount(1);
  });

  test('one-time prekeys the relay handed out are forgotten 30 days later, not kept for ever', async () => {
    const alice = await (await profile()).open();
    await register(alice, page.origin, 'alice');
    // Three users fetch ten of alice's bundles each (ten a minute per requester and target);
    // nobody ever writes to her with them.
    for (const name of ['fetcher1', 'fetcher2', 'fetcher3']) {
      const { connection: fetcher } = await registerFromNode(name);
      for (let i = 0; i < 10; i++) await fetcher.requestBundle('alice');
      fetcher.close();
    }
    // What alice's IndexedDB holds: her one-time prekeys, and how many are marked handed out.
    const prekeys = (): Promise<{ kept: number; handedOut: number }> =>
      alice.evaluate(
        () =>
          new Promise((resolve, reject) => {
            const open = indexedDB.open('sotto');
            open.onerror = () => reject(open.error);
            open.onsuccess = () => {
              const all = open.result.transaction('oneTimePrekeys').objectStore('oneTimePrekeys').getAll();
              all.onsuccess = () => {
                const keys = all.result as { handedOutAt?: number }[];
                open.result.close();
                resolve({ kept: keys.length, handedOut: keys.filter((k) => k.handedOutAt !== undefined).length });
              };
            };
          }),
      );
    const holding = (kept: number, handedOut: number) => async () => {
      const seen = await prekeys();
      return seen.kept === kept && seen.handedOut === handedOut ? null : JSON.stringify(seen);
    };
    assert.deepEqual(await prekeys(), { kept: 100, handedOut: 0 });
    await alice.reload();
    await online(alice);
    await eventually('the 30 handed out marked at login, still kept', holding(100, 30));

    // A month on (the marks moved back), the next login forgets them.
    await alice.evaluate(
      () =>
        new Promise<void>((resolve, reject) => {
          const open = indexedDB.open('sotto');
          open.onerror = () => reject(open.error);
          open.onsuccess = () => {
            const tx = open.result.transaction('oneTimePrekeys', 'readwrite');
            const store = tx.objectStore('oneTimePrekeys');
            const all = store.getAll();
            all.onsuccess = () => {
              for (const key of all.result as { handedOutAt?: number }[]) {
                if (key.handedOutAt !== undefined) store.put({ ...key, handedOutAt: key.handedOutAt - 31 * 24 * 3600 * 1000 });
              }
            };
            tx.oncomplete = () => {
              open.result.close();
              resolve();
            };
          };
        }),
    );
    await alice.reload();
    await online(alice);
    await eventually('the handed-out keys forgotten, the 70 at the relay kept', holding(70, 0));
  });

  test('the banner shows reconnecting and offline; what was written meanwhile is sent after', async () => {
    const aliceProfile = await profile();
    const alice = await aliceProfile.open();
    await register(alice, page.origin, 'alice');
    const bob = await (await profile()).open();
    await register(bob, page.origin, 'bob');
    await startConversation(alice, 'bob');
    await send(alice, 'before the outage');
    await openConversation(bob, 'alice');
    await expect(bubble(bob, 'before the outage'), 'delivered before').toBeVisible();

    for (const p of profiles) p.allowNetworkErrors = true;
    await relay.stop();
    await expect(alice.getByRole('status').filter({ hasText: 'Reconnecting' }), 'reconnecting banner').toBeVisible();
    await aliceProfile.context?.setOffline(true);
    await alice.evaluate(() => window.dispatchEvent(new Event('offline')));
    await expect(alice.getByRole('status').filter({ hasText: 'Offline' }), 'offline banner').toBeVisible();
    await send(alice, 'written while offline');
    await expect(bubble(alice, 'written while offline').locator('[data-status]'), 'sending').toHaveAttribute('data-status', 'sending');
    await screenshot(alice, '08-offline-banner');

    await relay.restart();
    await aliceProfile.context?.setOffline(false);
    await alice.evaluate(() => window.dispatchEvent(new Event('online')));
    await online(alice);
    await expect(bubble(bob, 'written while offline'), 'sent after reconnecting').toBeVisible();
    await expect(bob.locator('.messages li.msg'), 'nothing twice').toHaveCount(2);
    for (const p of profiles) p.allowNetworkErrors = false;
  });
});
