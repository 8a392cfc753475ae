// Builds the browser client into web/dist/: app.js (esbuild bundle of src/main.ts, with an
// external source map), and the static files (index.html, app.css, icon.svg) copied as they
// are. The relay serves this folder at `/` (crates/server/src/http.rs).
import { cp, mkdir, rm } from 'node:fs/promises';
import { build } from 'esbuild';

const dist = new URL('../dist/', import.meta.url);
await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

await build({
  entryPoints: ['src/main.ts'],
  outfile: 'dist/app.js',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome111', 'firefox115', 'safari16.4'],
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  logLevel: 'warning',
});
await cp(new URL('../static/', import.meta.url), dist, { recursive: true });
console.log('web/dist built');
