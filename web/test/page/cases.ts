/**
 * In-page harness: runs every portable protocol case (the shared vectors and the unit tests of
 * test/all.ts) and the browser-only store and client cases in the browser that loads it, with
 * vectors fetched from `/test-vectors/`, and publishes the outcome on `window.sottoCases` for
 * the Playwright test to read.
 */

import { allCases } from '../all.js';
import { tests as clientCases } from '../app/client.test.js';
import { tests as storeCases } from '../store/store.test.js';

export interface CaseOutcome {
  readonly suite: string;
  readonly name: string;
  readonly ok: boolean;
  readonly error: string | null;
}

declare global {
  interface Window {
    sottoCases?: Promise<CaseOutcome[]>;
  }
}

async function runAll(): Promise<CaseOutcome[]> {
  const portable = await allCases(async (file) => (await fetch(`/test-vectors/${file}`)).json() as Promise<unknown>);
  // The store and the client need IndexedDB, which only the browser has.
  const cases = [...portable, ...storeCases, ...clientCases];
  const outcomes: CaseOutcome[] = [];
  for (const c of cases) {
    try {
      await c.run();
      outcomes.push({ suite: c.suite, name: c.name, ok: true, error: null });
    } catch (error) {
      outcomes.push({ suite: c.suite, name: c.name, ok: false, error: error instanceof Error ? error.message : String(error) });
    }
  }
  const failed = outcomes.filter((o) => !o.ok).length;
  const summary = document.getElementById('summary');
  if (summary !== null) summary.textContent = `${outcomes.length - failed} passed, ${failed} failed`;
  return outcomes;
}

window.sottoCases = runAll();
