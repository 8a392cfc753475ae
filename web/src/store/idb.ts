/**
 * A thin promise layer over IndexedDB: open a database with its upgrade steps, and run a
 * function inside one transaction that commits or aborts as a whole.
 *
 * The one rule IndexedDB imposes, and why callers are shaped the way they are: a transaction
 * commits as soon as it has no pending request at the end of a task, so nothing but IndexedDB
 * requests may be awaited inside {@link Db.tx}. Web Crypto work happens before (reading in one
 * transaction) and its results are written after (in another); a per-peer queue keeps a second
 * operation from slipping in between (see `app/queue.ts`).
 */

/** Rejects with the request's error, resolves with its result. */
export function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

/** One upgrade step: runs when the stored version is below its index + 1. */
export type Migration = (db: IDBDatabase, tx: IDBTransaction) => void;

/** An open database. */
export class Db {
  readonly #db: IDBDatabase;

  private constructor(db: IDBDatabase) {
    this.#db = db;
    // Another tab upgrading the schema: let it, and stop using this connection.
    db.onversionchange = () => db.close();
  }

  /** Opens (creating or upgrading) `name` with the given migrations, in order. */
  static open(name: string, migrations: readonly Migration[]): Promise<Db> {
    return new Promise<Db>((resolve, reject) => {
      const req = indexedDB.open(name, migrations.length);
      req.onupgradeneeded = (event) => {
        const tx = req.transaction;
        if (tx === null) return;
        for (let v = event.oldVersion; v < migrations.length; v++) migrations[v]?.(req.result, tx);
      };
      req.onsuccess = () => resolve(new Db(req.result));
      req.onerror = () => reject(req.error ?? new Error('cannot open IndexedDB'));
      req.onblocked = () => reject(new Error('IndexedDB upgrade blocked by another tab'));
    });
  }

  /** Deletes a database (tests, "forget this identity"). */
  static delete(name: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req = indexedDB.deleteDatabase(name);
      req.onsuccess = () => resolve();
      req.onerror = () => reject(req.error ?? new Error('cannot delete IndexedDB'));
    });
  }

  close(): void {
    this.#db.close();
  }

  /**
   * Runs `work` in one transaction over `stores` and resolves once the transaction has
   * committed (durably: `relaxed` durability is not asked for, since an acknowledgement to the
   * relay follows some of these commits). If `work` throws, the transaction aborts and nothing
   * it wrote is kept.
   */
  tx<T>(stores: readonly string[], mode: IDBTransactionMode, work: (tx: IDBTransaction) => Promise<T>): Promise<T> {
    const tx = this.#db.transaction([...stores], mode, { durability: 'strict' });
    const done = new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
      tx.onerror = () => undefined; // reported through onabort
    });
    const result = work(tx).catch((error: unknown) => {
      try {
        tx.abort();
      } catch {
        // already finished
      }
      throw error;
    });
    // Both must settle: the result tells what happened, `done` that it is on disk.
    return Promise.all([result, done]).then(([value]) => value);
  }
}
