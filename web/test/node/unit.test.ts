/** Runs the portable unit cases (test/unit.ts) under Node's test runner, grouped by module. */

import { describe, test } from 'node:test';

import { unitCases } from '../unit.js';

const cases = unitCases();
const suites = new Map<string, typeof cases>();
for (const c of cases) suites.set(c.suite, [...(suites.get(c.suite) ?? []), c]);

for (const [suite, members] of suites) {
  describe(suite, () => {
    for (const c of members) test(c.name, c.run);
  });
}
