/**
 * The web client and the terminal client (`sotto register/send/recv/safety-number/trust`)
 * talking through one relay: each starts a session with the other (X3DH from both sides,
 * Rust ↔ Web Crypto), messages go both ways, both show the same safety number, and a
 * re-registered browser user is a key change the terminal client must accept with `trust`.
 *
 * The terminal commands are looked up in `sotto --help`; while they are missing the tests are
 * skipped, unless `SOTTO_CLI_READY` is set (then they run and fail).
 */

import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { Profile } from '../harness/browser.js';
import { expect } from '../harness/expect.js';
import { type PageServer, pageFor } from '../harness/page.js';
import { type Relay, sottoBin, startRelay } from '../harness/relay.js';
import { bubble, openConversation, register, send, startConversation } from '../harness/ui.js';

const execFileAsync = promisify(execFile);

function cliReady(): boolean {
  if (process.env['SOTTO_CLI_READY'] !== undefined) return true;
  try {
    const help = execFileSync(sottoBin(), ['--help'], { encoding: 'utf8' });
    return ['register', 'send', 'recv', 'safety-number', 'trust'].every((command) => new RegExp(`^\\s+${command}\\s`, 'm').test(help));
  } catch {
    return false;
  }
}

interface Received {
  readonly sender: string;
  readonly text: string;
  readonly id: number;
  readonly sentAt: number;
  readonly receivedAt: number;
}

describe('web client ↔ terminal client', { skip: cliReady() ? false : 'the sotto binary lacks register/send/recv/safety-number/trust (set SOTTO_CLI_READY to run anyway)' }, () => {
  let relay: Relay;
  let page: PageServer;
  let profiles: Profile[] = [];

  /** Runs `sotto --server … --home <dir>/<home> ARGS`. */
  const sotto = async (home: string, ...args: string[]): Promise<string> => {
    const { stdout } = await execFileAsync(sottoBin(), ['--server', relay.url, '--home', join(relay.dir, home), ...args], { timeout: 60_000 });
    return stdout;
  };
  const recv = async (home: string): Promise<Received[]> =>
    (await sotto(home, 'recv', '--wait', '2', '--json'))
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as Received);

  const browser = async (): Promise<Profile> => {
    const p = await Profile.create();
    profiles.push(p);
    return p;
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

  test('a browser user and a terminal user chat both ways and see the same safety number', async () => {
    await sotto('termi', 'register', 'termi');
    const alice = await (await browser()).open();
    await register(alice, page.origin, 'alice');

    // The browser starts the session (X3DH against the Rust client's prekeys).
    await startConversation(alice, 'termi');
    await send(alice, 'hello terminal, from the browser');
    await send(alice, 'ünïcödé ✓ and a second line\nhere');
    const got = await recv('termi');
    assert.deepEqual(
      got.map((m) => [m.sender, m.text]),
      [
        ['alice', 'hello terminal, from the browser'],
        ['alice', 'ünïcödé ✓ and a second line\nhere'],
      ],
    );
    await expect(bubble(alice, 'hello terminal').locator('[data-status]'), 'delivered to the terminal').toHaveAttribute('data-status', 'delivered');

    // And back.
    await sotto('termi', 'send', 'alice', 'hello browser, from the terminal');
    await expect(bubble(alice, 'hello browser, from the terminal'), 'terminal message in the browser').toBeVisible();

    // Both sides compute the same 60 digits.
    const terminalNumber = (await sotto('termi', 'safety-number', 'alice')).split('\n')[0]?.trim() ?? '';
    await alice.getByRole('button', { name: 'Safety number' }).click();
    const browserNumber = await alice.getByRole('dialog').locator('.digits').getAttribute('data-digits');
    assert.match(terminalNumber, /^(\d{5} ){11}\d{5}$/);
    assert.equal(browserNumber, terminalNumber);
  });

  test('the terminal user starts the session; a re-registered browser user is a key change for it', async () => {
    await sotto('termi', 'register', 'termi');
    const firstBob = await browser();
    let bob = await firstBob.open();
    await register(bob, page.origin, 'bob');

    // X3DH the other way round: the Rust client initiates, the browser responds.
    await sotto('termi', 'send', 'bob', 'first contact from the terminal');
    await openConversation(bob, 'termi');
    await expect(bubble(bob, 'first contact from the terminal'), 'prekey message from Rust').toBeVisible();
    await send(bob, 'reply from the browser');
    assert.deepEqual((await recv('termi')).map((m) => m.text), ['reply from the browser']);

    // Bob loses his browser; his id is released and registered again with new keys.
    await firstBob.dispose();
    await execFileAsync(sottoBin(), ['admin', 'release-user', '--database', `sqlite:${relay.dbPath}`, 'bob']);
    bob = await (await browser()).open();
    await register(bob, page.origin, 'bob');

    // The terminal client refuses to send to the new key until told to trust it.
    await assert.rejects(sotto('termi', 'send', 'bob', 'are you still you?'), (error: { stderr?: string }) => {
      assert.match(error.stderr ?? '', /identity key changed/);
      return true;
    });
    await sotto('termi', 'trust', 'bob');
    await sotto('termi', 'send', 'bob', 'trusted your new key');
    await openConversation(bob, 'termi');
    await expect(bubble(bob, 'trusted your new key'), 'message to the new key').toBeVisible();
  });
});
