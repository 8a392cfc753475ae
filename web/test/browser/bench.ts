/**
 * `npm run bench:browser`: the per-message cost of the protocol in headless Chromium (encrypt +
 * encode + decode + decrypt of a 256-byte text), printed as messages per second. A benchmark,
 * not a test: it asserts nothing about speed.
 */

import { fileURLToPath } from 'node:url';

import type { BenchResult } from '../page/bench.js';
import { Profile } from '../harness/browser.js';
import { staticServer } from '../harness/page.js';

const PAGE_DIR = fileURLToPath(new URL('./page/', import.meta.url));

const server = await staticServer({ '/': PAGE_DIR }, null);
const profile = await Profile.create();
try {
  const page = await profile.open();
  await page.goto(`${server.origin}/bench.html`);
  const version = profile.context?.browser()?.version() ?? (await page.evaluate(() => navigator.userAgent));
  const results = await page.evaluate(async () => (await window.sottoBench) as BenchResult[]);
  console.log(`Chromium ${version}`);
  for (const r of results) {
    console.log(
      `${r.name}: ${r.messages} messages in ${r.ms.toFixed(0)} ms = ${r.perSecond.toFixed(0)} messages/s (${r.microsPerMessage.toFixed(0)} µs each)`,
    );
  }
  if (profile.errors.length > 0) throw new Error(profile.errors.join('\n'));
} finally {
  await profile.dispose();
  await server.close();
}
