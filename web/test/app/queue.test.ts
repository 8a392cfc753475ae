/** Per-peer serial queues (src/app/queue.ts). */

import { KeyedQueue } from '../../src/app/queue.js';
import { suite } from '../support/cases.js';
import { assertEqual } from '../support/assert.js';

const tick = (ms = 1): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export const tests = suite('app/queue', {
  'tasks for one key never overlap and run in order': async () => {
    const queue = new KeyedQueue();
    const log: string[] = [];
    let running = 0;
    let overlap = false;
    const task = (name: string) => async () => {
      running++;
      if (running > 1) overlap = true;
      log.push(`start ${name}`);
      await tick(3);
      log.push(`end ${name}`);
      running--;
      return name;
    };
    const results = await Promise.all([queue.run('bob', task('a')), queue.run('bob', task('b')), queue.run('bob', task('c'))]);
    assertEqual(overlap, false, 'overlap');
    assertEqual(results.join(), 'a,b,c', 'results');
    assertEqual(log.join('|'), 'start a|end a|start b|end b|start c|end c', 'order');
  },
  'different keys run concurrently': async () => {
    const queue = new KeyedQueue();
    let both = false;
    let running = 0;
    const task = async (): Promise<void> => {
      running++;
      await tick(5);
      if (running === 2) both = true;
      running--;
    };
    await Promise.all([queue.run('alice', task), queue.run('bob', task)]);
    assertEqual(both, true, 'concurrent');
  },
  'a failed task does not stop the next one': async () => {
    const queue = new KeyedQueue();
    const failed = queue.run('bob', async () => {
      throw new Error('boom');
    });
    const next = queue.run('bob', async () => 'ran');
    let caught = false;
    await failed.catch(() => (caught = true));
    assertEqual(caught, true, 'failure reported to its caller');
    assertEqual(await next, 'ran', 'next task');
  },
});
