/**
 * A man in the middle for the end-to-end tests: a lying relay built from an honest one.
 *
 * The browser loads the page from this proxy, so its origin (and the host it signs logins for)
 * is the proxy's; plain HTTP is passed through to whatever serves the page (the relay, or the
 * stand-in of `page.ts`), and each Engine.IO v4 WebSocket (`/socket.io/?EIO=4&transport=
 * websocket`) is accepted here and paired with the proxy's own WebSocket to the real relay.
 * The relay accepts logins bound only to its own names, so tests start it with the proxy's
 * address as a `--public-host` (the relay ignores the forwarded `Host` header for that).
 * Long-polling is refused, so nothing can slip past the hooks.
 *
 * Frames are passed on unchanged unless a hook says otherwise. The proxy understands the
 * Socket.IO packets that matter (`42[…]` events, `42N[…]` requests, `43N[…]` answers) and lets
 * a test
 *
 * - rewrite the relay's answer to any request of the client ({@link Mitm.answer}: substitute
 *   an identity or a whole bundle, replay an old bundle),
 * - decide the fate of every message the relay pushes ({@link Mitm.deliver}: pass, drop,
 *   duplicate, tamper with, or hold back to deliver later in any order with
 *   {@link Link.push}),
 * - send requests of its own on a client's connection ({@link Link.request}, e.g. to
 *   acknowledge withheld messages on the client's behalf, as a relay that lies would).
 *
 * Everything the client sent and everything the relay pushed is recorded for assertions.
 */

import { Buffer } from 'node:buffer';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

import { type RawData, WebSocket, WebSocketServer } from 'ws';

import type { Relay } from './relay.js';

/** One message of a `message:receive` push, as the relay sent it (or as the proxy forges it). */
export interface PushedMessage {
  readonly id: number;
  readonly from: string;
  readonly receivedAt: number;
  readonly envelope: EnvelopeShape;
}

/** The parts of an envelope (PROTOCOL.md §8.5) a tampering proxy touches; the rest is kept. */
export interface EnvelopeShape {
  readonly header: { readonly dh: string; readonly pn: number; readonly n: number };
  readonly prekey?: unknown;
  readonly ciphertext: string;
  readonly [field: string]: unknown;
}

/** A Socket.IO packet of the default namespace, as far as the proxy understands it. */
export type Packet =
  | { readonly kind: 'event'; readonly name: string; readonly args: readonly unknown[]; readonly ack: number | null }
  | { readonly kind: 'ack'; readonly ack: number; readonly args: readonly unknown[] }
  | { readonly kind: 'other' };

/** Parses one Engine.IO text frame. Anything but a default-namespace event or ack is `other`. */
export function parseFrame(data: string): Packet {
  // Engine.IO "4" = message; Socket.IO "2" = EVENT, "3" = ACK; then an optional ack id.
  const match = /^4([23])(\d*)(\[.*)$/s.exec(data);
  if (match === null) return { kind: 'other' };
  const [, type, id, json] = match;
  let args: unknown;
  try {
    args = JSON.parse(json ?? '');
  } catch {
    return { kind: 'other' };
  }
  if (!Array.isArray(args)) return { kind: 'other' };
  const ack = id === undefined || id === '' ? null : Number(id);
  if (type === '3') return ack === null ? { kind: 'other' } : { kind: 'ack', ack, args };
  const [name, ...rest] = args as unknown[];
  return typeof name === 'string' ? { kind: 'event', name, args: rest, ack } : { kind: 'other' };
}

export function eventFrame(name: string, args: readonly unknown[], ack: number | null = null): string {
  return `42${ack ?? ''}${JSON.stringify([name, ...args])}`;
}

export function ackFrame(ack: number, args: readonly unknown[]): string {
  return `43${ack}${JSON.stringify(args)}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A client's request the relay has not answered yet. */
interface Pending {
  readonly name: string;
  readonly payload: unknown;
}

/** Rewrites the relay's answer to a client's request. */
export type AnswerHook = (link: Link, name: string, request: unknown, answer: unknown) => unknown;

/** What to hand the client instead of one pushed message: nothing, it, a changed copy, several. */
export type DeliverHook = (link: Link, message: PushedMessage) => readonly PushedMessage[];

/** One browser connection and the proxy's connection to the relay behind it. */
export class Link {
  /** The user this connection logged in or registered as (from the client's request). */
  user: string | null = null;
  /** Every event the client sent, in order. */
  readonly sent: { readonly name: string; readonly payload: unknown }[] = [];
  readonly #mitm: Mitm;
  readonly #client: WebSocket;
  readonly #upstream: WebSocket;
  readonly #pending = new Map<number, Pending>();
  /** The proxy's own requests on this connection, by ack id (far above the client's). */
  readonly #own = new Map<number, (answer: unknown) => void>();
  #nextOwn = 1_000_000_000;
  /** Frames from the relay are handled one at a time, in order, even when a hook awaits. */
  #fromRelay: Promise<void> = Promise.resolve();
  #toRelayQueue: string[] | null = [];

  constructor(mitm: Mitm, client: WebSocket, upstream: WebSocket) {
    this.#mitm = mitm;
    this.#client = client;
    this.#upstream = upstream;
    upstream.on('open', () => {
      const queued = this.#toRelayQueue ?? [];
      this.#toRelayQueue = null;
      for (const frame of queued) upstream.send(frame);
    });
    client.on('message', (data: RawData, binary: boolean) => {
      try {
        this.#onClientFrame(rawText(data), binary);
      } catch (error) {
        mitm.fail(error);
      }
    });
    upstream.on('message', (data: RawData, binary: boolean) => {
      const text = rawText(data);
      this.#fromRelay = this.#fromRelay.then(() => this.#onRelayFrame(text, binary)).catch((error: unknown) => mitm.fail(error));
    });
    const closeBoth = (): void => {
      if (client.readyState === WebSocket.OPEN || client.readyState === WebSocket.CONNECTING) client.close();
      if (upstream.readyState === WebSocket.OPEN) upstream.close();
      else if (upstream.readyState === WebSocket.CONNECTING) upstream.terminate();
    };
    client.on('close', closeBoth);
    upstream.on('close', closeBoth);
    client.on('error', closeBoth);
    upstream.on('error', closeBoth);
  }

  get open(): boolean {
    return this.#client.readyState === WebSocket.OPEN;
  }

  /** Sends a frame to the browser. */
  toClient(frame: string): void {
    if (this.#client.readyState === WebSocket.OPEN) this.#client.send(frame);
  }

  /** Sends a frame to the relay (queued until the proxy's socket is open). */
  toRelay(frame: string): void {
    if (this.#toRelayQueue !== null) this.#toRelayQueue.push(frame);
    else if (this.#upstream.readyState === WebSocket.OPEN) this.#upstream.send(frame);
  }

  /** Pushes messages to the browser as the relay would (`message:receive`). */
  push(messages: readonly PushedMessage[]): void {
    if (messages.length > 0) this.toClient(eventFrame('message:receive', [{ messages }]));
  }

  /** Sends a request of the proxy's own on this connection; the client never sees the answer. */
  request(name: string, payload: unknown): Promise<unknown> {
    const ack = this.#nextOwn++;
    return new Promise<unknown>((resolve) => {
      this.#own.set(ack, resolve);
      this.toRelay(eventFrame(name, [payload], ack));
    });
  }

  /** Acknowledges messages on the client's behalf: the relay deletes them, the sender sees "delivered". */
  async ackOnBehalf(ids: readonly number[]): Promise<void> {
    const answer = await this.request('message:ack', { ids });
    if (!isRecord(answer) || answer['ok'] !== true) throw new Error(`the relay refused the proxy's ack: ${JSON.stringify(answer)}`);
  }

  /** Drops the browser's connection (it reconnects by itself). */
  drop(): void {
    this.#client.terminate();
  }

  /**
   * Ends the connection the way the relay does when it gives up on a socket (a failed read of
   * the queue, a push the socket could not take): a Socket.IO DISCONNECT packet for the
   * namespace, after which socket.io-client does not reconnect on its own.
   */
  disconnectAsRelay(): void {
    this.toClient('41');
  }

  #onClientFrame(text: string, binary: boolean): void {
    if (binary) throw new Error('the client sent a binary frame');
    const packet = parseFrame(text);
    if (packet.kind === 'event') {
      const payload = packet.args[0];
      this.sent.push({ name: packet.name, payload });
      if (packet.ack !== null) this.#pending.set(packet.ack, { name: packet.name, payload });
      if ((packet.name === 'auth:login' || packet.name === 'user:register-key') && isRecord(payload) && typeof payload['userId'] === 'string') {
        this.user = payload['userId'];
      }
      this.#mitm.noteSent(this, packet.name, payload);
    }
    this.toRelay(text);
  }

  async #onRelayFrame(text: string, binary: boolean): Promise<void> {
    if (binary) throw new Error('the relay sent a binary frame');
    const packet = parseFrame(text);
    if (packet.kind === 'ack') {
      const own = this.#own.get(packet.ack);
      if (own !== undefined) {
        this.#own.delete(packet.ack);
        own(packet.args[0]);
        return;
      }
      const pending = this.#pending.get(packet.ack);
      if (pending !== undefined) {
        this.#pending.delete(packet.ack);
        const answer = await this.#mitm.answer(this, pending.name, pending.payload, packet.args[0]);
        this.toClient(ackFrame(packet.ack, [answer]));
        return;
      }
    }
    if (packet.kind === 'event' && packet.name === 'message:receive') {
      const payload = packet.args[0];
      const messages = isRecord(payload) && Array.isArray(payload['messages']) ? (payload['messages'] as PushedMessage[]) : [];
      const out: PushedMessage[] = [];
      for (const message of messages) {
        this.#mitm.notePushed(this, message);
        out.push(...this.#mitm.deliver(this, message));
      }
      this.push(out);
      return;
    }
    if (packet.kind === 'event' && packet.name === 'user:public-key') {
      // The same answer as `user:request-key`, also pushed: rewritten the same way.
      const payload = packet.args[0];
      const request = { userId: isRecord(payload) ? payload['userId'] : undefined };
      this.toClient(eventFrame(packet.name, [await this.#mitm.answer(this, 'user:request-key', request, payload)]));
      return;
    }
    this.toClient(text);
  }
}

function rawText(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data as ArrayBuffer).toString('utf8');
}

/** What a test can wait for. */
interface Waiter {
  readonly check: () => boolean;
  readonly resolve: () => void;
}

export class Mitm {
  /** The origin to open in the browser (`http://127.0.0.1:PORT`). */
  readonly origin: string;
  /** `127.0.0.1:PORT`. */
  readonly host: string;
  readonly links: Link[] = [];
  /** Every message the relay pushed, by recipient, before any hook (what an honest relay sent). */
  readonly pushed = new Map<string, PushedMessage[]>();
  /** Message ids each user's browser acknowledged. */
  readonly acked = new Map<string, number[]>();
  /** Errors inside the proxy (a test fails on any). */
  readonly errors: string[] = [];

  /** Rewrites answers; default: unchanged. */
  answer: AnswerHook = (_link, _name, _request, answer) => answer;
  /** Decides the fate of each pushed message; default: delivered as is. */
  deliver: DeliverHook = (_link, message) => [message];

  readonly #server: Server;
  readonly #wss: WebSocketServer;
  #waiters: Waiter[] = [];
  #nextFakeId = 900_000_000;

  private constructor(server: Server, wss: WebSocketServer, port: number) {
    this.#server = server;
    this.#wss = wss;
    this.host = `127.0.0.1:${port}`;
    this.origin = `http://${this.host}`;
  }

  /**
   * Starts a proxy in front of `relay`; pages and assets come from `pageOrigin` (the relay
   * itself, or the stand-in that serves web/dist).
   */
  /** `port` 0 picks a free one; the relay must list `127.0.0.1:PORT` as a public host. */
  static async start(relay: Relay, pageOrigin: string, port = 0): Promise<Mitm> {
    const page = new URL(pageOrigin);
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
    let mitm: Mitm | null = null;
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path.startsWith('/socket.io/')) {
        // Long-polling would go around the hooks: refused, as by `serve --websocket-only`.
        res.writeHead(400, { 'content-type': 'application/json' }).end('{"code":0,"message":"Transport unknown"}');
        return;
      }
      forwardHttp(req, res, page);
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const self = mitm;
      const url = new URL(req.url ?? '/', 'http://x');
      if (self === null || !url.pathname.startsWith('/socket.io/') || url.searchParams.get('transport') !== 'websocket') {
        socket.destroy();
        return;
      }
      wss.handleUpgrade(req, socket, head, (client) => {
        const upstream = new WebSocket(`ws://127.0.0.1:${relay.port}${req.url ?? '/'}`, {
          headers: { host: req.headers.host ?? self.host, ...(req.headers.origin === undefined ? {} : { origin: req.headers.origin }) },
          perMessageDeflate: false,
        });
        self.links.push(new Link(self, client, upstream));
      });
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    const address = server.address();
    if (typeof address !== 'object' || address === null) throw new Error('no address');
    mitm = new Mitm(server, wss, address.port);
    return mitm;
  }

  /** The open connections of `user`'s browser. */
  linksOf(user: string): Link[] {
    return this.links.filter((link) => link.user === user && link.open);
  }

  /** The one open connection of `user` (fails if there is none, or several). */
  link(user: string): Link {
    const links = this.linksOf(user);
    if (links.length !== 1) throw new Error(`${user} has ${links.length} open connections through the proxy`);
    const [link] = links as [Link];
    return link;
  }

  /** Messages the relay pushed to `user` from `from` (each relay id once). */
  pushedTo(user: string, from?: string): PushedMessage[] {
    const byId = new Map<number, PushedMessage>();
    for (const m of this.pushed.get(user) ?? []) if ((from === undefined || m.from === from) && !byId.has(m.id)) byId.set(m.id, m);
    return [...byId.values()];
  }

  /** Events `user`'s browser sent (over all its connections) named `name`. */
  sentBy(user: string, name: string): unknown[] {
    return this.links.filter((l) => l.user === user).flatMap((l) => l.sent.filter((e) => e.name === name).map((e) => e.payload));
  }

  /** A relay id no real message has: what a replay looks like when the relay files it anew. */
  fakeId(): number {
    return this.#nextFakeId++;
  }

  /** Resolves once `check` holds (checked after every frame, and now), or fails after `timeoutMs`. */
  waitFor(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      const waiter: Waiter = {
        check,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      this.#waiters.push(waiter);
    });
  }

  /** @internal */
  noteSent(link: Link, name: string, payload: unknown): void {
    if (name === 'message:ack' && link.user !== null && isRecord(payload) && Array.isArray(payload['ids'])) {
      const list = this.acked.get(link.user) ?? [];
      list.push(...(payload['ids'] as number[]));
      this.acked.set(link.user, list);
    }
    this.#wake();
  }

  /** @internal */
  notePushed(link: Link, message: PushedMessage): void {
    const user = link.user ?? '?';
    const list = this.pushed.get(user) ?? [];
    list.push(message);
    this.pushed.set(user, list);
    queueMicrotask(() => this.#wake());
  }

  /** @internal */
  fail(error: unknown): void {
    this.errors.push(error instanceof Error ? (error.stack ?? error.message) : String(error));
  }

  #wake(): void {
    const ready = this.#waiters.filter((w) => w.check());
    this.#waiters = this.#waiters.filter((w) => !ready.includes(w));
    for (const waiter of ready) waiter.resolve();
  }

  async close(): Promise<void> {
    for (const client of this.#wss.clients) client.terminate();
    this.#wss.close();
    await new Promise<void>((resolve) => {
      this.#server.closeAllConnections();
      this.#server.close(() => resolve());
    });
  }
}

function forwardHttp(req: IncomingMessage, res: ServerResponse, page: URL): void {
  const upstream = httpRequest(
    { host: page.hostname, port: page.port, method: req.method, path: req.url, headers: { ...req.headers, host: page.host } },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
}

// ---- tampering ----------------------------------------------------------------------------------

/** The envelope with one bit of its ciphertext flipped (`bit` counts from the first byte's top bit). */
export function flipCiphertextBit(envelope: EnvelopeShape, bit: number): EnvelopeShape {
  const bytes = Buffer.from(envelope.ciphertext, 'base64url');
  const index = Math.floor(bit / 8) % bytes.length;
  bytes[index] = (bytes[index] ?? 0) ^ (0x80 >> bit % 8);
  return { ...envelope, ciphertext: bytes.toString('base64url') };
}

/** The envelope with its (cleartext, authenticated) header changed. */
export function withHeader(envelope: EnvelopeShape, header: Partial<EnvelopeShape['header']>): EnvelopeShape {
  return { ...envelope, header: { ...envelope.header, ...header } };
}
