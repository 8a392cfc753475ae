/**
 * The page's entry point: open this browser's store, then show registration or the identity
 * kept here, connected to the relay that served the page.
 *
 * # Layout of the browser client
 *
 * | concept                                              | where            |
 * |------------------------------------------------------|------------------|
 * | the end-to-end protocol on Web Crypto                | `src/protocol/`  |
 * | the relay's Socket.IO events, typed calls            | `src/transport/` |
 * | IndexedDB: identity, prekeys, sessions, history      | `src/store/`     |
 * | the client: login, outbox, receive-save-ack, keys    | `src/app/`       |
 * | screens, dialogs, the connection banner              | `src/ui/`        |
 */

import { Client, type ClientOptions } from './app/client.js';
import { AppError, explain } from './app/errors.js';
import { Store } from './store/store.js';
import { ChatView, renderRegistration, type Shell } from './ui/app.js';
import { h, replace } from './ui/dom.js';

const root = document.getElementById('app');
if (root === null) throw new Error('index.html has no #app');
const appRoot: HTMLElement = root;

// The relay that served this page; login signatures are bound to this host (§13).
const options: ClientOptions = { url: location.origin, host: location.host };

function fatal(error: unknown): void {
  replace(appRoot, h('main', { class: 'welcome' }, h('h1', {}, 'Sotto'), h('p', { class: 'error', role: 'alert' }, explain(error))));
}

/**
 * Holds this origin's Sotto lock for the page's lifetime. Two tabs on one identity would each
 * run ratchet steps on the same stored sessions (per-peer queues are per page), which could
 * reuse a message key; so only one tab runs the client, and another says so.
 */
function holdTabLock(): Promise<boolean> {
  const locks = globalThis.navigator?.locks;
  if (locks === undefined) return Promise.resolve(true);
  return new Promise<boolean>((resolve) => {
    void locks.request('sotto-client', { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      // Never resolves while the page lives: the lock is released when the tab closes.
      return lock === null ? undefined : new Promise<never>(() => undefined);
    });
  });
}

async function boot(): Promise<void> {
  if (globalThis.crypto?.subtle === undefined || typeof indexedDB === 'undefined') throw new AppError('unsupported_browser');
  if (!(await holdTabLock())) {
    replace(
      appRoot,
      h(
        'main',
        { class: 'welcome' },
        h('h1', {}, 'Sotto'),
        h('p', { role: 'alert' }, 'Sotto is already open in another tab of this browser. Use that tab, or close it and reload this one.'),
      ),
    );
    return;
  }
  let store: Store;
  try {
    store = await Store.open();
  } catch {
    throw new AppError('storage');
  }
  const shell: Shell = {
    async register(userId) {
      const client = await Client.create(store, userId, options);
      let view: ChatView | null = null;
      try {
        await client.start(listenerFor(() => view));
      } catch (error) {
        // The id was taken (by someone else): forget the keys made for it.
        client.stop();
        store.close();
        await Store.destroy();
        store = await Store.open();
        throw error;
      }
      view = new ChatView(appRoot, client, shell);
      return client;
    },
    async forget() {
      store.close();
      await Store.destroy();
      location.reload();
    },
  };
  const existing = await Client.open(store, options);
  if (existing === null) {
    renderRegistration(appRoot, shell, () => undefined);
    return;
  }
  let view: ChatView | null = null;
  view = new ChatView(appRoot, existing, shell);
  // A registration interrupted before the relay answered is finished here; if the id was
  // taken meanwhile, the banner says so and offers to forget the identity.
  existing.start(listenerFor(() => view)).catch((error: unknown) => view?.problem(error, null));
}

/** Forwards client events to whichever view exists. */
function listenerFor(view: () => ChatView | null): Parameters<Client['start']>[0] {
  return {
    changed: (peer) => view()?.changed(peer),
    connection: (state) => view()?.connection(state),
    problem: (error, peer) => view()?.problem(error, peer),
  };
}

boot().catch(fatal);
