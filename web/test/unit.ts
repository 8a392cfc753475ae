/**
 * Every unit test case (protocol and app layers), as one portable list (no `node:` imports): the Node runner registers
 * them with node:test, and a browser harness can run the same list.
 */

import type { TestCase } from './support/cases.js';
import { tests as bytes } from './protocol/bytes.test.js';
import { tests as json } from './protocol/json.test.js';
import { tests as keys } from './protocol/keys.test.js';
import { tests as ratchet } from './protocol/ratchet.test.js';
import { tests as record } from './protocol/record.test.js';
import { tests as safetyNumber } from './protocol/safetyNumber.test.js';
import { tests as session } from './protocol/session.test.js';
import { tests as signing } from './protocol/signing.test.js';
import { tests as userId } from './protocol/userId.test.js';
import { tests as wire } from './protocol/wire.test.js';
import { tests as counters } from './app/counters.test.js';
import { tests as events } from './app/events.test.js';
import { tests as queue } from './app/queue.test.js';

export function unitCases(): TestCase[] {
  return [...bytes, ...json, ...userId, ...keys, ...signing, ...record, ...wire, ...ratchet, ...session, ...safetyNumber, ...counters, ...queue, ...events];
}
