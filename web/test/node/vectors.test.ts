/**
 * Runs the shared test vectors under Node's test runner: one node:test case per vector, grouped
 * by file. The cases themselves live in test/vectors/cases.ts and run unchanged in a browser.
 */

import { readFile } from 'node:fs/promises';
import { describe, test } from 'node:test';

import { vectorCases } from '../vectors/cases.js';

// This file runs bundled from web/.test-build/node/, two levels below web/ like its source.
const VECTOR_DIR = new URL('../../../test-vectors/', import.meta.url);

const cases = await vectorCases(async (file) => JSON.parse(await readFile(new URL(file, VECTOR_DIR), 'utf8')) as unknown);

const suites = new Map<string, typeof cases>();
for (const c of cases) suites.set(c.suite, [...(suites.get(c.suite) ?? []), c]);

for (const [suite, members] of suites) {
  describe(suite, () => {
    for (const c of members) test(c.name, c.run);
  });
}
