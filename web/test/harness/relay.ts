/**
 * A real relay for tests: `$SOTTO_BIN serve` on a free loopback port with a fresh SQLite file
 * in a temporary folder, stopped (and the folder removed) by the test.
 *
 * The binary is `$SOTTO_BIN`, else `$CARGO_TARGET_DIR/debug/sotto`, else `target/debug/sotto`
 * at the repository root; a missing binary fails the test with a message saying so.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file runs bundled from web/.test-build/<kind>/). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export function sottoBin(): string {
  const candidates = [
    process.env['SOTTO_BIN'],
    process.env['CARGO_TARGET_DIR'] === undefined ? undefined : join(process.env['CARGO_TARGET_DIR'], 'debug', 'sotto'),
    join(REPO_ROOT, 'target', 'debug', 'sotto'),
  ];
  for (const candidate of candidates) if (candidate !== undefined && existsSync(candidate)) return candidate;
  throw new Error('no sotto binary: set SOTTO_BIN to a built `sotto` (cargo build -p sotto)');
}

/** A free TCP port on 127.0.0.1 (bound, read and released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface Relay {
  /** `http://127.0.0.1:PORT` */
  readonly url: string;
  /** `127.0.0.1:PORT`, what clients sign. */
  readonly host: string;
  readonly port: number;
  /** The SQLite file. */
  readonly dbPath: string;
  /** The temporary folder (also for terminal-client homes). */
  readonly dir: string;
  /** Stops the process (the database stays until {@link Relay.dispose}). */
  stop(): Promise<void>;
  /** Starts it again on the same port and database. */
  restart(): Promise<void>;
  /** Stops it and removes the temporary folder. */
  dispose(): Promise<void>;
  /** What the relay printed (for failure messages). */
  output(): string;
}

async function waitHealthy(url: string, child: ChildProcess, deadlineMs: number): Promise<void> {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`relay exited with ${child.exitCode}`);
    try {
      const response = await fetch(`${url}/healthz`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('relay did not become healthy in time');
}

/** Starts a relay. `args` are added to `serve`'s (e.g. `--websocket-only`). */
export async function startRelay(args: readonly string[] = []): Promise<Relay> {
  const bin = sottoBin();
  const dir = await mkdtemp(join(tmpdir(), 'sotto-web-test-'));
  const dbPath = join(dir, 'relay.db');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let log = '';
  let child: ChildProcess | null = null;

  const launch = async (): Promise<void> => {
    const proc = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--database', `sqlite:${dbPath}`, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env['RUST_LOG'] ?? 'warn' },
    });
    proc.stdout?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    proc.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    child = proc;
    try {
      await waitHealthy(url, proc, 20_000);
    } catch (error) {
      proc.kill('SIGKILL');
      throw new Error(`${String(error)}\n${log}`);
    }
  };

  const stop = async (): Promise<void> => {
    const proc = child;
    child = null;
    if (proc === null || proc.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };

  await launch();
  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    dbPath,
    dir,
    stop,
    restart: launch,
    async dispose() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
    output: () => log,
  };
}
