// Bundles each Node test entry (test/node/*.test.ts) into .test-build/node/ as an ES module,
// so `node --test` runs them without a TypeScript loader. Type checking is `npm run typecheck`.
import { readdir, rm } from 'node:fs/promises';
import { build } from 'esbuild';

const outdir = new URL('../.test-build/node/', import.meta.url);
// Start clean, so a deleted test cannot keep running from a stale bundle.
await rm(outdir, { recursive: true, force: true });

const entries = (await readdir(new URL('../test/node/', import.meta.url)))
  .filter((name) => name.endsWith('.test.ts'))
  .map((name) => `test/node/${name}`);

await build({
  entryPoints: entries,
  outdir: '.test-build/node',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
  // node:test, node:fs and the like stay imports; everything else is bundled.
  packages: 'external',
});
