/**
 * Headless Chromium for the end-to-end tests, driven by playwright-core: Debian's chromium
 * (`$CHROMIUM`, default /usr/bin/chromium; never a downloaded browser), each profile in a
 * fresh temporary folder, and every console error and uncaught exception of every page
 * recorded so a test can require there were none.
 */

import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { type BrowserContext, chromium, type Page } from 'playwright-core';

import { REPO_ROOT } from './relay.js';

export const CHROMIUM = process.env['CHROMIUM'] ?? '/usr/bin/chromium';

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** Where screenshots go (`$SOTTO_SCREENSHOTS`, default <repo>/screenshots, gitignored). */
export const SCREENSHOTS = process.env['SOTTO_SCREENSHOTS'] ?? join(REPO_ROOT, 'screenshots');

/** A browser profile: a user data folder that survives closing and reopening the browser. */
export class Profile {
  readonly dir: string;
  context: BrowserContext | null = null;
  /** Console errors and page errors seen, with the page URL. */
  readonly errors: string[] = [];
  /** Messages that are expected while a test deliberately breaks the network. */
  allowNetworkErrors = false;

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async create(): Promise<Profile> {
    return new Profile(await mkdtemp(join(tmpdir(), 'sotto-chromium-')));
  }

  /** Starts Chromium on this profile and returns its first page. */
  async open(viewport: { width: number; height: number } = { width: 1100, height: 720 }): Promise<Page> {
    const context = await chromium.launchPersistentContext(this.dir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport,
    });
    this.context = context;
    context.on('page', (page) => this.watch(page));
    for (const page of context.pages()) this.watch(page);
    return context.pages()[0] ?? (await context.newPage());
  }

  watch(page: Page): void {
    page.on('console', (message) => {
      if (message.type() !== 'error') return;
      const text = message.text();
      // While a test has taken the relay or the network away, Chromium itself reports the
      // failed connection attempts; those are the condition under test, not the app's errors.
      if (this.allowNetworkErrors && /WebSocket connection|ERR_CONNECTION_REFUSED|ERR_INTERNET_DISCONNECTED|Failed to load resource/.test(text)) return;
      this.errors.push(`console.error on ${page.url()}: ${text}`);
    });
    page.on('pageerror', (error) => this.errors.push(`uncaught on ${page.url()}: ${error.message}`));
  }

  /** Closes the browser (the profile folder stays). */
  async close(): Promise<void> {
    const context = this.context;
    this.context = null;
    await context?.close();
  }

  /** Closes the browser and deletes the profile. */
  async dispose(): Promise<void> {
    await this.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Saves a screenshot as <SCREENSHOTS>/<name>.png. */
export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}
