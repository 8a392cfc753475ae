/**
 * The browser client's screens: registration, the conversation list, a conversation with its
 * key-change warning and composer, the safety-number dialog and the connection banner.
 *
 * Views are rebuilt from the store whenever the client says something changed (coalesced to
 * one render per frame); the composer and the dialogs are long-lived elements, so typing and
 * focus survive re-renders. Everything a person can act on is a real control with an
 * accessible name.
 */

import { type Client, type ConnectionState } from '../app/client.js';
import { errorCode, explain, explainCode, explainRegistration } from '../app/errors.js';
import { type PublicIdentity, sameIdentityKeys } from '../protocol/identity.js';
import type { Contact, Conversation, Message } from '../store/store.js';
import { h, replace } from './dom.js';
import { formatTime, plural, statusLabel } from './format.js';
import { qrSvg, qrText } from './qr.js';

/** What the shell needs from the page's bootstrap. */
export interface Shell {
  /** Creates and registers an identity; resolves with the started client. */
  register(userId: string): Promise<Client>;
  /** Deletes this browser's identity and starts over. */
  forget(): Promise<void>;
}

/** Messages shown when a conversation opens, and added by each "Show earlier messages". */
const CONVERSATION_PAGE = 100;

const BANNER: Record<ConnectionState, string> = {
  connecting: 'Connecting…',
  online: 'Online',
  reconnecting: 'Reconnecting… Messages you write are kept and sent when the relay is back.',
  offline: 'Offline. Messages you write will be sent when you are back online.',
  rejected: 'The relay no longer accepts the identity kept in this browser.',
};

/** The registration screen. */
export function renderRegistration(root: HTMLElement, shell: Shell, onRegistered: (client: Client) => void): void {
  const input = h('input', {
    id: 'user-id',
    name: 'user-id',
    type: 'text',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
    minlength: 2,
    maxlength: 32,
    'aria-describedby': 'user-id-hint',
  });
  const error = h('p', { class: 'error', role: 'alert', id: 'register-error' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Create my identity');
  const form = h(
    'form',
    { class: 'register-form', novalidate: true },
    h('label', { for: 'user-id' }, 'User id'),
    input,
    h('p', { class: 'hint', id: 'user-id-hint' }, '2 to 32 characters: a–z, 0–9, “.”, “_” or “-”. Others find you by it.'),
    button,
    error,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    error.textContent = '';
    button.disabled = true;
    input.disabled = true;
    button.textContent = 'Creating keys and registering…';
    shell.register(input.value).then(onRegistered, (failure: unknown) => {
      error.textContent = explainRegistration(failure);
      button.disabled = false;
      input.disabled = false;
      button.textContent = 'Create my identity';
      input.focus();
    });
  });
  replace(
    root,
    h(
      'main',
      { class: 'welcome' },
      h('h1', {}, 'Sotto'),
      h('p', { class: 'tagline' }, 'End-to-end encrypted chat. Your keys are made in this browser and never leave it; the relay only ever sees ciphertext.'),
      form,
    ),
  );
  input.focus();
}

/** The main screen: conversations and the open conversation. */
export class ChatView {
  readonly #client: Client;
  readonly #shell: Shell;
  readonly #root: HTMLElement;
  #active: string | null = null;
  /**
   * What the open conversation reads: from its oldest message on screen (so arrivals do not
   * push messages off the top while someone reads), and at least the newest `atLeast`. A reader
   * at the bottom is shown only the newest page of it (see {@link #renderConversation}).
   */
  #view: { since: number | null; atLeast: number } = { since: null, atLeast: CONVERSATION_PAGE };
  /**
   * Counts the views the reader asked for (opening a conversation, earlier messages): a render
   * that started before the latest ask is stale and shows nothing.
   */
  #viewAsked = 0;
  /** The ask for earlier messages whose first render keeps the reader's place, if any. */
  #keepPlaceFor: number | null = null;
  #renderScheduled = false;
  #dirty = new Set<string | null>();
  #generation = 0;
  #problemTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * Whose safety number the open dialog shows, and computed with which identity: when that
   * identity stops being the one to compare (another one became pending), it is shown afresh.
   */
  #dialogShows: { readonly peer: string; readonly identity: PublicIdentity } | null = null;

  // Long-lived elements.
  readonly #banner = h('div', { class: 'banner', role: 'status', 'aria-live': 'polite' });
  readonly #list = h('ul', { class: 'conv-list', 'aria-label': 'Conversations' });
  readonly #startInput = h('input', {
    id: 'start-peer',
    type: 'text',
    placeholder: 'their user id',
    autocapitalize: 'none',
    spellcheck: 'false',
    autocomplete: 'off',
  });
  readonly #startError = h('p', { class: 'error', role: 'alert' });
  readonly #pane = h('section', { class: 'pane', 'aria-label': 'Conversation' });
  readonly #header = h('header', { class: 'conv-header' });
  readonly #warning = h('div', { class: 'keychange', hidden: true });
  readonly #log = h('ol', { class: 'messages', role: 'log', 'aria-label': 'Message history', 'aria-live': 'polite' });
  readonly #message = h('textarea', { id: 'message', rows: 1, placeholder: 'Write a message', autocomplete: 'off' });
  readonly #sendButton = h('button', { type: 'submit', class: 'primary send' }, 'Send');
  readonly #composerNote = h('p', { class: 'composer-note', id: 'composer-note' });
  readonly #composer = h(
    'form',
    { class: 'composer', 'aria-label': 'Write a message' },
    h('label', { for: 'message', class: 'visually-hidden' }, 'Message'),
    this.#message,
    this.#sendButton,
  );
  readonly #empty = h(
    'div',
    { class: 'empty-pane' },
    h('p', {}, 'Pick a conversation, or start one with someone’s user id.'),
  );
  readonly #problem = h('div', { class: 'toast', role: 'alert', hidden: true });
  readonly #dialog = h('dialog', { class: 'safety', 'aria-labelledby': 'safety-title' });
  readonly #layout = h('div', { class: 'layout', 'data-view': 'list' });

  constructor(root: HTMLElement, client: Client, shell: Shell) {
    this.#root = root;
    this.#client = client;
    this.#shell = shell;
    const startForm = h(
      'form',
      { class: 'start-form' },
      h('label', { for: 'start-peer' }, 'Start a conversation'),
      h('div', { class: 'row' }, this.#startInput, h('button', { type: 'submit' }, 'Start')),
      this.#startError,
    );
    startForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#act(() => this.#start());
    });
    this.#composer.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#act(() => this.#send());
    });
    this.#message.addEventListener('keydown', (event) => {
      // Enter sends; Shift+Enter makes a new line; Enter while composing (IME) is the IME's.
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.#act(() => this.#send());
      }
    });
    this.#message.addEventListener('input', () => this.#autosize());
    replace(
      this.#root,
      h(
        'div',
        { class: 'shell' },
        h(
          'header',
          { class: 'topbar' },
          h('span', { class: 'brand' }, 'Sotto'),
          this.#banner,
          h('span', { class: 'me' }, 'You are ', h('strong', {}, client.userId)),
        ),
        this.#layout,
        this.#problem,
        this.#dialog,
      ),
    );
    replace(
      this.#layout,
      h('nav', { class: 'sidebar', 'aria-label': 'Conversations' }, startForm, this.#list),
      this.#pane,
    );
    this.#showEmptyPane();
    this.connection(client.connectionState);
    this.changed(null);
  }

  /** Runs a UI action; a failure is shown, never left as an unhandled rejection. */
  #act(action: () => Promise<unknown>, peer: string | null = null): void {
    action().catch((error: unknown) => this.problem(error, peer));
  }

  // ---- client events ------------------------------------------------------------------------

  changed(peer: string | null): void {
    this.#dirty.add(peer);
    if (this.#renderScheduled) return;
    this.#renderScheduled = true;
    // One render per frame, however many changes arrive (a backlog of 64 messages is one).
    const run = (): void => {
      this.#renderScheduled = false;
      const dirty = this.#dirty;
      this.#dirty = new Set();
      this.#act(() => this.#render(dirty));
    };
    if (typeof requestAnimationFrame === 'function' && document.visibilityState === 'visible') requestAnimationFrame(run);
    else setTimeout(run, 0);
  }

  connection(state: ConnectionState): void {
    this.#banner.className = `banner banner-${state}`;
    replace(this.#banner, h('span', { class: 'dot', 'aria-hidden': 'true' }), BANNER[state]);
    if (state === 'rejected') {
      const forget = h('button', { type: 'button', class: 'link' }, 'Forget this identity');
      forget.addEventListener('click', () => this.#act(() => this.#shell.forget()));
      this.#banner.append(' ', forget);
    }
  }

  problem(error: unknown, peer: string | null): void {
    this.#problem.textContent = explain(error, peer ?? undefined);
    this.#problem.dataset['code'] = errorCode(error);
    this.#problem.hidden = false;
    clearTimeout(this.#problemTimer);
    this.#problemTimer = setTimeout(() => {
      this.#problem.hidden = true;
    }, 8000);
  }

  // ---- rendering ----------------------------------------------------------------------------

  async #render(dirty: Set<string | null>): Promise<void> {
    const generation = ++this.#generation;
    const list = await this.#client.conversations();
    if (generation !== this.#generation) return;
    this.#renderList(list);
    if (this.#active !== null && (dirty.has(this.#active) || dirty.has(null))) await this.#renderConversation(this.#active);
  }

  #renderList(list: { conversation: Conversation; contact: Contact | null }[]): void {
    if (list.length === 0) {
      replace(this.#list, h('li', { class: 'conv-empty' }, 'No conversations yet.'));
      return;
    }
    replace(
      this.#list,
      ...list.map(({ conversation, contact }) => {
        const peer = conversation.peer;
        const unread = conversation.unread;
        const online = this.#client.online.has(peer);
        const label = [peer, online ? 'online' : null, unread > 0 ? `${plural(unread, 'unread message')}` : null, contact?.pending ? 'safety number changed' : null]
          .filter((x) => x !== null)
          .join(', ');
        const button = h(
          'button',
          {
            type: 'button',
            class: 'conv',
            'aria-label': label,
            'aria-current': peer === this.#active ? 'true' : null,
            'data-peer': peer,
          },
          h('span', { class: `avatar${online ? ' online' : ''}`, 'aria-hidden': 'true' }, peer.slice(0, 1).toUpperCase()),
          h(
            'span',
            { class: 'conv-text' },
            h('span', { class: 'conv-name' }, peer, contact?.verified && !contact.pending ? h('span', { class: 'tick', title: 'Verified' }, ' ✔') : null),
            h('span', { class: 'conv-preview' }, contact?.pending ? '⚠ Safety number changed' : conversation.preview || 'No messages yet'),
          ),
          unread > 0 ? h('span', { class: 'badge', 'aria-hidden': 'true' }, String(unread)) : null,
        );
        button.addEventListener('click', () => this.#act(() => this.open(peer), peer));
        return h('li', {}, button);
      }),
    );
  }

  /** Opens `peer`'s conversation. */
  async open(peer: string): Promise<void> {
    const switching = this.#active !== peer;
    this.#active = peer;
    this.#layout.dataset['view'] = 'conversation';
    if (switching) {
      this.#view = { since: null, atLeast: CONVERSATION_PAGE };
      this.#viewAsked++;
      this.#message.value = '';
      this.#autosize();
      replace(this.#pane, this.#header, this.#warning, this.#log, this.#composerNote, this.#composer);
      this.#pane.setAttribute('aria-label', `Conversation with ${peer}`);
    }
    await this.#client.setActive(peer);
    await this.#renderConversation(peer);
    this.changed(null);
    if (switching) this.#message.focus();
  }

  #close(): void {
    this.#active = null;
    // Taken out of the page, the log loses its scroll position: reopened, it starts at the bottom.
    delete this.#log.dataset['peer'];
    this.#act(() => this.#client.setActive(null));
    this.#layout.dataset['view'] = 'list';
    this.#showEmptyPane();
    this.changed(null);
  }

  #showEmptyPane(): void {
    this.#pane.setAttribute('aria-label', 'Conversation');
    replace(this.#pane, this.#empty);
  }

  async #renderConversation(peer: string): Promise<void> {
    const asked = this.#viewAsked;
    const read = await this.#client.conversation(peer, this.#view);
    const { contact } = read;
    if (this.#active !== peer || this.#viewAsked !== asked) return;
    const online = this.#client.online.has(peer);
    const back = h('button', { type: 'button', class: 'back', 'aria-label': 'Back to conversations' }, '‹');
    back.addEventListener('click', () => this.#close());
    const safety = h('button', { type: 'button', class: 'secondary' }, 'Safety number');
    safety.addEventListener('click', () => this.#act(() => this.#showSafetyNumber(peer), peer));
    safety.disabled = contact === null;
    replace(
      this.#header,
      back,
      h(
        'div',
        { class: 'conv-title' },
        h('h2', {}, peer),
        h(
          'span',
          { class: 'conv-sub' },
          online ? 'online' : 'offline',
          contact?.verified && !contact.pending ? h('span', { class: 'verified' }, ' · ✔ Verified') : null,
        ),
      ),
      safety,
    );

    const pending = contact?.pending ?? null;
    const changed = pending !== null;
    this.#warning.hidden = !changed;
    if (pending !== null) {
      // No accepting from here: the banner shows no number, and a relay can make another
      // identity pending between the comparison and the click without the banner changing.
      // The new key is accepted from its safety number, for the identity that number is of.
      const compare = h('button', { type: 'button', class: 'primary' }, 'Compare safety numbers');
      compare.addEventListener('click', () => this.#act(() => this.#showSafetyNumber(peer), peer));
      this.#warning.setAttribute('role', 'alert');
      replace(
        this.#warning,
        h('h3', {}, `${peer}’s safety number has changed`),
        h(
          'p',
          {},
          `This happens when ${peer} reinstalls Sotto or starts using a new browser. It can also mean someone is trying to listen in. `,
          `Sending is paused until you accept the new key. If you can, compare the new safety number with ${peer} in person or on a call first.`,
        ),
        h('div', { class: 'actions' }, compare),
      );
    } else {
      this.#warning.removeAttribute('role');
    }
    const shown = this.#dialogShows;
    if (this.#dialog.open && contact !== null && shown?.peer === peer && !sameIdentityKeys(shown.identity, pending ?? contact.identity)) {
      this.#act(() => this.#showSafetyNumber(peer), peer);
    }
    this.#message.disabled = changed;
    this.#sendButton.disabled = changed;
    this.#composerNote.textContent = changed ? `Sending to ${peer} is blocked until you accept the new key.` : '';
    this.#composerNote.hidden = !changed;

    const fromBottom = this.#log.scrollHeight - this.#log.scrollTop;
    const atBottom = fromBottom - this.#log.clientHeight < 40;
    const keepPlace = this.#keepPlaceFor === asked && this.#log.dataset['peer'] === peer;
    // A reader at the bottom follows the conversation: it goes back to its newest page, or one
    // left open all day would grow (and re-render) with every arrival. What goes is above the
    // screen; "Show earlier messages" brings it back. Decided here, on the scroll position of
    // the moment the log is replaced, not before the read: a reader who scrolled up meanwhile
    // loses nothing. Not on the render that answers "Show earlier messages", which adds them.
    const following = !keepPlace && (atBottom || this.#log.dataset['peer'] !== peer);
    const trimmed = following && read.messages.length > CONVERSATION_PAGE;
    const messages = trimmed ? read.messages.slice(-CONVERSATION_PAGE) : read.messages;
    const earlier = read.earlier || trimmed;
    const items = messages.map((m) => this.#messageItem(peer, m));
    if (earlier) {
      const more = h('button', { type: 'button', class: 'link' }, 'Show earlier messages');
      more.addEventListener('click', () => {
        this.#view = { since: null, atLeast: messages.length + CONVERSATION_PAGE };
        this.#keepPlaceFor = ++this.#viewAsked;
        this.#act(() => this.#renderConversation(peer), peer);
      });
      items.unshift(h('li', { class: 'notice earlier' }, more));
    }
    replace(this.#log, ...items);
    if (messages.length === 0) this.#log.append(h('li', { class: 'notice' }, 'No messages yet. Say hello — only you and ' + peer + ' can read what you write.'));
    // Earlier messages added above: what was on screen stays where it was.
    if (keepPlace) this.#log.scrollTop = this.#log.scrollHeight - fromBottom;
    else if (following) this.#log.scrollTop = this.#log.scrollHeight;
    if (this.#keepPlaceFor === asked) this.#keepPlaceFor = null;
    this.#log.dataset['peer'] = peer;
    // `since` covers everything on screen from now on, so `atLeast` can go back to a page: the
    // next read is what is shown plus what arrived, not the pages once asked for.
    this.#view = { since: messages[0]?.id ?? null, atLeast: CONVERSATION_PAGE };
  }

  #messageItem(peer: string, message: Message): HTMLLIElement {
    if (message.direction === 'notice') {
      if (message.kind === 'missing') {
        const count = Number(message.text ?? '1');
        const text = `${plural(count, 'message')} from ${peer} ${count === 1 ? 'is' : 'are'} missing. The relay did not deliver ${count === 1 ? 'it' : 'them'}.`;
        return h('li', { class: 'notice warn', 'data-kind': 'missing' }, text);
      }
      if (message.kind === 'unconfirmed') {
        const count = Number(message.text ?? '1');
        const text = `The relay reported ${plural(count, 'message')} of yours delivered, but ${peer}’s newer messages say ${count === 1 ? 'it never' : 'they never'} arrived.`;
        return h('li', { class: 'notice warn', 'data-kind': 'unconfirmed' }, text);
      }
      if (message.kind === 'digest_mismatch') {
        return h('li', { class: 'notice warn', 'data-kind': 'digest_mismatch' }, `${peer} received a different copy of one of your messages than the one you sent.`);
      }
      return h('li', { class: 'notice warn', 'data-kind': 'key_changed' }, `${peer}’s safety number changed.`);
    }
    const out = message.direction === 'out';
    // A time no `Date` can hold (saved before the client checked) shows as none rather than
    // throwing and leaving the conversation unrendered.
    const sent = new Date(message.sentAt);
    const time = Number.isFinite(sent.getTime()) ? h('time', { datetime: sent.toISOString() }, formatTime(message.sentAt)) : h('time', {}, '');
    let body: HTMLElement;
    if (message.kind === 'undecryptable') body = h('p', { class: 'text muted' }, `A message from ${peer} could not be decrypted.`);
    else if (message.kind === 'unsupported') body = h('p', { class: 'text muted' }, 'An unsupported kind of message (a newer Sotto may show it).');
    else body = h('p', { class: 'text' }, message.text ?? '');
    const status = out
      ? h(
          'span',
          { class: `status status-${message.status}`, 'data-status': message.status },
          statusIcon(message.status),
          statusLabel(message),
          message.status === 'failed' && message.error !== null ? `: ${explainCode(message.error, peer)}` : '',
          message.unconfirmed === true ? h('strong', { class: 'not-received' }, ` · ⚠ ${peer} did not get it`) : null,
        )
      : null;
    return h(
      'li',
      { class: `msg ${out ? 'out' : 'in'}${message.kind === 'text' ? '' : ' special'}`, 'data-kind': message.kind },
      body,
      h('span', { class: 'meta' }, time, status),
    );
  }

  #autosize(): void {
    this.#message.rows = Math.min(6, Math.max(1, this.#message.value.split('\n').length));
  }

  // ---- actions ------------------------------------------------------------------------------

  async #start(): Promise<void> {
    this.#startError.textContent = '';
    const input = this.#startInput.value;
    try {
      const peer = await this.#client.startConversation(input);
      this.#startInput.value = '';
      await this.open(peer);
    } catch (error) {
      this.#startError.textContent = explain(error, input.trim() === '' ? undefined : input);
    }
  }

  async #send(): Promise<void> {
    const peer = this.#active;
    const text = this.#message.value;
    if (peer === null || this.#message.disabled || text.trim() === '') return;
    try {
      await this.#client.send(peer, text);
      this.#message.value = '';
      this.#autosize();
      this.#log.scrollTop = this.#log.scrollHeight;
    } catch (error) {
      this.problem(error, peer);
    }
  }

  async #showSafetyNumber(peer: string): Promise<void> {
    const result = await this.#client.safetyNumber(peer);
    if (result === null) return;
    const { number, identity, verified, changed } = result;
    this.#dialogShows = { peer, identity };
    const groups = number.grouped.split(' ');
    const close = h('button', { type: 'button', class: 'secondary' }, 'Close');
    close.addEventListener('click', () => this.#dialog.close());
    const mark = h('button', { type: 'button', class: 'primary' }, verified ? 'Mark as not verified' : 'Mark as verified');
    mark.addEventListener('click', () => {
      this.#act(() => this.#client.setVerified(peer, !verified).then(() => this.#showSafetyNumber(peer)), peer);
    });
    // A changed key is accepted here, for the identity whose number is on screen: if another
    // one has become pending meanwhile, the client refuses and this dialog shows its number.
    const accept = h('button', { type: 'button', class: 'danger' }, 'Accept new key');
    accept.addEventListener('click', () => {
      this.#act(
        () => this.#client.acceptKeyChange(peer, identity).then(() => this.#dialog.close()),
        peer,
      );
    });
    replace(
      this.#dialog,
      h('h2', { id: 'safety-title' }, `Safety number with ${peer}`),
      h(
        'p',
        {},
        `Compare these numbers with the ones ${peer} sees, in person or on a call. If they match, no one is between you.`,
      ),
      h(
        'div',
        { class: 'digits', role: 'group', 'aria-label': `Safety number: ${number.grouped}`, 'data-digits': number.grouped },
        ...groups.map((g) => h('span', {}, g)),
      ),
      h('figure', { class: 'qr-box' }, qrSvg(qrText(number.qr), `QR code of the safety number with ${peer}`), h('figcaption', {}, `${peer} sees this same code: scan it to compare`)),
      h(
        'p',
        { class: `verify-state${verified ? ' ok' : ''}` },
        changed
          ? `This is the number for ${peer}’s new key. Accept the new key to mark it verified.`
          : verified
            ? `✔ You marked ${peer} as verified.`
            : `${peer} is not verified yet.`,
      ),
      h('div', { class: 'actions' }, close, changed ? accept : mark),
    );
    if (!this.#dialog.open) this.#dialog.showModal();
    // Never the acceptance: a key pressed by habit must not trust a new key.
    (changed ? close : mark).focus();
  }
}

function statusIcon(status: Message['status']): HTMLElement {
  const icon = { sending: '◷', stored: '✓', delivered: '✓✓', failed: '!', received: '' }[status];
  return h('span', { class: 'status-icon', 'aria-hidden': 'true' }, icon, ' ');
}
