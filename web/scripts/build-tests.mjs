// Bundles the Node test entries of one folder (test/<kind>/*.test.ts, and for `browser` also
// the in-page harness and the benchmark) into .test-build/<kind>/ as ES modules, so `node
// --test` runs them without a TypeScript loader. Type checking is `npm run typecheck`.
//
//   node scripts/build-tests.mjs node      unit tests and vectors (no relay, no browser)
//   node scripts/build-tests.mjs relay     wire tests against a real relay ($SOTTO_BIN)
//   node scripts/build-tests.mjs browser   Playwright end-to-end tests, in-page harness, bench
import { copyFile, readdir, rm } from 'node:fs/promises';
import { build } from 'esbuild';

const kind = process.argv[2] ?? 'node';
if (!['node', 'relay', 'browser'].includes(kind)) throw new Error(`unknown test kind ${kind}`);
const outdir = `.test-build/${kind}`;
// Start clean, so a deleted test cannot keep running from a stale bundle.
await rm(new URL(`../${outdir}/`, import.meta.url), { recursive: true, force: true });

const names = await readdir(new URL(`../test/${kind}/`, import.meta.url));
const entries = names
  .filter((name) => name.endsWith('.test.ts') || (kind === 'browser' && name === 'bench.ts'))
  .map((name) => `test/${kind}/${name}`);

await build({
  entryPoints: entries,
  outdir,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
  // node:test, playwright-core, better-sqlite3 and the like stay imports; the rest is bundled.
  packages: 'external',
});

if (kind === 'browser') {
  // What the pages load: the portable test cases and the benchmark, bundled for Chromium.
  await build({
    entryPoints: { cases: 'test/page/cases.ts', bench: 'test/page/bench.ts' },
    outdir: `${outdir}/page`,
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'chrome111',
    sourcemap: 'inline',
    logLevel: 'warning',
  });
  for (const page of ['index.html', 'bench.html']) {
    await copyFile(new URL(`../test/page/${page}`, import.meta.url), new URL(`../${outdir}/page/${page}`, import.meta.url));
  }
}
