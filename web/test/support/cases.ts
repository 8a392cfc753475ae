/** The shape every portable test case has, in Node and in the browser. */
export interface TestCase {
  /** Groups cases in reports: a vector file name or a source module. */
  readonly suite: string;
  /** Unique within its suite. */
  readonly name: string;
  /** Resolves when the case passes; rejects with the reason otherwise. */
  readonly run: () => Promise<void>;
}

/** Runs `make` once and hands every caller the same promise (shared expensive setup). */
export function once<T>(make: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= make());
}

/** A suite of cases from `{ name: run }` pairs, in order. */
export function suite(name: string, cases: { readonly [caseName: string]: () => Promise<void> }): TestCase[] {
  return Object.entries(cases).map(([caseName, run]) => ({ suite: name, name: caseName, run }));
}
