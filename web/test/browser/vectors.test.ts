/**
 * The protocol layer's portable cases (every shared test vector and every unit test of
 * test/all.ts) run inside headless Chromium, under the relay's CSP: the same list Node runs in
 * `npm test`, so both engines are held to the same vectors. The IndexedDB store's cases run
 * here too (Node has no IndexedDB).
 */

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import type { CaseOutcome } from '../page/cases.js';
import { Profile } from '../harness/browser.js';
import { type PageServer, staticServer } from '../harness/page.js';
import { REPO_ROOT } from '../harness/relay.js';

// This file runs bundled from web/.test-build/browser/; the page bundle sits beside it.
const PAGE_DIR = fileURLToPath(new URL('./page/', import.meta.url));

let server: PageServer;
let profile: Profile;

before(async () => {
  server = await staticServer({ '/': PAGE_DIR, '/test-vectors/': join(REPO_ROOT, 'test-vectors') }, null);
  profile = await Profile.create();
});

after(async () => {
  await profile.dispose();
  await server.close();
});

test('every protocol vector, unit case and store case passes in Chromium', async () => {
  const page = await profile.open();
  await page.goto(`${server.origin}/index.html`);
  const outcomes = await page.evaluate(async () => (await window.sottoCases) as CaseOutcome[]);
  const failed = outcomes.filter((o) => !o.ok).map((o) => `${o.suite} › ${o.name}: ${o.error ?? ''}`);
  const vectors = outcomes.filter((o) => o.suite.endsWith('.json')).length;
  console.log(`# Chromium: ${outcomes.length - failed.length} of ${outcomes.length} cases passed (${vectors} of them from test-vectors/)`);
  assert.deepEqual(failed, []);
  assert.ok(outcomes.length > 100, `only ${outcomes.length} cases ran`);
  assert.ok(outcomes.filter((o) => o.suite === 'store').length >= 3, 'the store cases ran');
  assert.deepEqual(profile.errors, []);
});
