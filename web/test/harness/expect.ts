/**
 * A small retrying `expect` for playwright-core locators (the assertions of @playwright/test
 * live in that test runner, which these tests do not use: they run under node:test). Each
 * check polls until it holds or `timeout` passes, then fails with what it last saw.
 */

import type { Locator } from 'playwright-core';

const DEFAULT_TIMEOUT = 15_000;

async function poll(what: string, check: () => Promise<string | null>, timeout: number): Promise<void> {
  const until = Date.now() + timeout;
  let last: string | null = 'not checked';
  while (Date.now() < until) {
    try {
      last = await check();
    } catch (error) {
      last = String(error);
    }
    if (last === null) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`expected ${what}: ${last}`);
}

/** Polls `check` (null once what is expected holds, else what it saw) until it holds or `timeout` passes. */
export function eventually(what: string, check: () => Promise<string | null>, timeout = DEFAULT_TIMEOUT): Promise<void> {
  return poll(what, check, timeout);
}

export function expect(locator: Locator, what: string, timeout = DEFAULT_TIMEOUT) {
  return {
    toBeVisible: () => poll(`${what} to be visible`, async () => ((await locator.first().isVisible()) ? null : 'not visible'), timeout),
    toBeHidden: () => poll(`${what} to be hidden`, async () => ((await locator.first().isVisible()) ? 'visible' : null), timeout),
    toContainText: (text: string) =>
      poll(
        `${what} to contain “${text}”`,
        async () => {
          const seen = await locator.first().textContent({ timeout: 1000 });
          return seen !== null && seen.includes(text) ? null : `text was “${seen ?? ''}”`;
        },
        timeout,
      ),
    toHaveValue: (value: string) =>
      poll(`${what} to have value “${value}”`, async () => {
        const seen = await locator.inputValue({ timeout: 1000 });
        return seen === value ? null : `value was “${seen}”`;
      }, timeout),
    toHaveCount: (count: number) =>
      poll(`${what} to number ${count}`, async () => {
        const seen = await locator.count();
        return seen === count ? null : `count was ${seen}`;
      }, timeout),
    toBeDisabled: () => poll(`${what} to be disabled`, async () => ((await locator.isDisabled({ timeout: 1000 })) ? null : 'enabled'), timeout),
    toBeEnabled: () => poll(`${what} to be enabled`, async () => ((await locator.isEnabled({ timeout: 1000 })) ? null : 'disabled'), timeout),
    toHaveAttribute: (name: string, value: string) =>
      poll(`${what} to have ${name}="${value}"`, async () => {
        const seen = await locator.first().getAttribute(name, { timeout: 1000 });
        return seen === value ? null : `${name} was ${String(seen)}`;
      }, timeout),
  };
}
