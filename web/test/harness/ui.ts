/** What a person does in the web client, as Playwright steps (by role and label, as they see it). */

import { expect } from './expect.js';
import type { Locator, Page } from 'playwright-core';

/** Opens the client and registers `user`; resolves once the relay accepted and it is online. */
export async function register(page: Page, origin: string, user: string): Promise<void> {
  await page.goto(origin);
  await page.getByLabel('User id', { exact: true }).fill(user);
  await page.getByRole('button', { name: 'Create my identity' }).click();
  await online(page);
  await expect(page.locator('.me'), `signed in as ${user}`).toContainText(user);
}

/** Waits for the connection banner to say Online. */
export async function online(page: Page): Promise<void> {
  await expect(page.getByRole('status').filter({ hasText: 'Online' }), 'online').toBeVisible();
}

export async function startConversation(page: Page, peer: string): Promise<void> {
  await page.getByLabel('Start a conversation').fill(peer);
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await expect(page.getByRole('heading', { name: peer, exact: true }), `conversation with ${peer}`).toBeVisible();
}

export async function openConversation(page: Page, peer: string): Promise<void> {
  await page.locator(`button.conv[data-peer="${peer}"]`).click();
  await expect(page.getByRole('heading', { name: peer, exact: true }), `conversation with ${peer}`).toBeVisible();
}

/** Types a message and presses Enter. */
export async function send(page: Page, text: string): Promise<void> {
  const field = page.getByLabel('Message', { exact: true });
  await field.fill(text);
  await field.press('Enter');
  await expect(field, 'message field cleared').toHaveValue('');
}

/** The bubble showing `text` in the open conversation. */
export function bubble(page: Page, text: string): Locator {
  return page.locator('.messages li.msg').filter({ has: page.locator('p.text', { hasText: text }) });
}
