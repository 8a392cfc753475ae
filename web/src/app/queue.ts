/**
 * Serial queues by key: one conversation's ratchet steps run one at a time.
 *
 * A ratchet operation reads the session, works in Web Crypto (asynchronously) and writes the
 * result back. Two operations on one peer that overlapped would both start from the same state
 * and the later write would silently undo the earlier one, reusing a message key or losing a
 * receiving chain. Different peers do not share state, so they run concurrently.
 */
export class KeyedQueue {
  readonly #tails = new Map<string, Promise<unknown>>();

  /** Runs `task` after every task queued before it under `key`; resolves with its result. */
  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const result = previous.then(task, task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.#tails.set(key, tail);
    // Forget idle keys so the map does not grow with every peer ever seen.
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }
}
