/**
 * Where a browser test loads the web client from.
 *
 * The relay serves `web/dist` itself (crates/server/src/http.rs). A debug `sotto` compiled
 * while `web/dist` did not exist serves only its "not built" page, whatever is built later
 * (rust-embed then compares against an uncanonicalised folder path), so when the relay does
 * not serve our build this starts a small same-origin stand-in: it serves `web/dist` with the
 * relay's own security headers and passes `/socket.io/` (long-polling and WebSocket upgrades)
 * through to the relay, keeping the `Host` header, so logins are signed for the host the page
 * came from exactly as with the relay serving it.
 */

import { readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { connect } from 'node:net';
import { extname, join, normalize } from 'node:path';

import { REPO_ROOT, type Relay } from './relay.js';

export const DIST = join(REPO_ROOT, 'web', 'dist');

/** The relay's CSP (crates/server/src/http.rs), so the stand-in is as strict. */
export const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
  '.map': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
};

export interface PageServer {
  /** The origin to open (`http://127.0.0.1:PORT`). */
  readonly origin: string;
  /** Whether the relay serves the page itself (false: the stand-in does). */
  readonly servedByRelay: boolean;
  close(): Promise<void>;
}

/**
 * Serves files with the relay's headers: `mounts` maps URL prefixes (ending in `/`) to folders,
 * longest prefix first; `/socket.io/` goes to `relay` when given.
 */
export async function staticServer(mounts: Record<string, string>, relay: Relay | null): Promise<PageServer> {
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (relay !== null && path.startsWith('/socket.io/')) return forward(req, res, relay);
    const prefix = prefixes.find((p) => path.startsWith(p));
    const root = prefix === undefined ? undefined : mounts[prefix];
    if (prefix === undefined || root === undefined) {
      res.writeHead(404).end();
      return;
    }
    const rest = path.slice(prefix.length);
    const file = join(root, normalize(`/${rest === '' ? 'index.html' : rest}`));
    if (!file.startsWith(root)) {
      res.writeHead(403).end();
      return;
    }
    readFile(file).then(
      (body) => {
        res.writeHead(200, {
          'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
          'content-security-policy': CSP,
          'x-content-type-options': 'nosniff',
          'cache-control': 'no-cache',
        });
        res.end(body);
      },
      () => res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n'),
    );
  });
  // Upgraded connections are no longer the HTTP server's: `closeAllConnections` leaves them
  // open and `close` would wait for them forever, so they are tracked and destroyed here.
  const tunnels = new Set<{ destroy(): void }>();
  if (relay !== null) {
    server.on('upgrade', (req: IncomingMessage, socket, head) => {
      tunnels.add(socket);
      socket.on('close', () => tunnels.delete(socket));
      const upstream = connect(relay.port, '127.0.0.1', () => {
        const lines = [`${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head.length > 0) upstream.write(head);
        upstream.pipe(socket);
        socket.pipe(upstream);
      });
      tunnels.add(upstream);
      upstream.on('close', () => tunnels.delete(upstream));
      upstream.on('error', () => socket.destroy());
      socket.on('error', () => upstream.destroy());
    });
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('no address');
  return {
    origin: `http://127.0.0.1:${address.port}`,
    servedByRelay: false,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        for (const tunnel of tunnels) tunnel.destroy();
        server.close(() => resolve());
      }),
  };
}

function forward(req: IncomingMessage, res: import('node:http').ServerResponse, relay: Relay): void {
  const upstream = httpRequest(
    { host: '127.0.0.1', port: relay.port, method: req.method, path: req.url, headers: req.headers },
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

/**
 * The relay itself when it serves our build, else the stand-in in front of it. The page and
 * its script are both compared: a debug relay reads the `web/dist` of the checkout it was
 * compiled in, whose `index.html` can match ours while its `app.js` is another build.
 */
export async function pageFor(relay: Relay): Promise<PageServer> {
  let same = true;
  for (const file of ['index.html', 'app.js', 'app.css']) {
    const built = await readFile(join(DIST, file), 'utf8');
    const served = await fetch(`${relay.url}/${file}`).then((r) => (r.ok ? r.text() : ''), () => '');
    same &&= served === built;
  }
  if (same) return { origin: relay.url, servedByRelay: true, close: async () => undefined };
  return staticServer({ '/': DIST }, relay);
}
