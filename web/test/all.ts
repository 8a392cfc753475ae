/**
 * Every portable case, vectors and unit tests, for a runner that is not Node's: a browser
 * harness bundles this module, passes a loader that fetches `test-vectors/<file>`, runs each
 * case's `run()` and reports `suite › name` with the outcome. Nothing here imports from `node:`.
 */

import type { TestCase } from './support/cases.js';
import { unitCases } from './unit.js';
import { type LoadVectorFile, vectorCases } from './vectors/cases.js';

export type { TestCase } from './support/cases.js';
export type { LoadVectorFile } from './vectors/cases.js';

/** All cases: the shared vectors first, then the unit tests. */
export async function allCases(load: LoadVectorFile): Promise<TestCase[]> {
  return [...(await vectorCases(load)), ...unitCases()];
}
