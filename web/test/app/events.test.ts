/** Checks on what the relay sends (src/transport/events.ts) and error explanations (src/app/errors.ts). */

import { AppError, errorCode, explain, explainCode, explainRegistration } from '../../src/app/errors.js';
import { newClientId } from '../../src/app/client.js';
import { asLogin, asReceipts, asReceivedMessages, asSend, asStatuses, asUpload, prekeysHeld } from '../../src/transport/events.js';
import { RelayError } from '../../src/transport/relay.js';
import { suite } from '../support/cases.js';
import { assert, assertEqual } from '../support/assert.js';

export const tests = suite('app/events', {
  'well-formed answers are read': async () => {
    assertEqual(asLogin({ ok: true, userId: 'bob', queued: 2, oneTimePrekeys: 100 })?.queued, 2, 'queued');
    assertEqual(asLogin({ ok: true, userId: 'bob', queued: 2, oneTimePrekeys: 0 })?.oneTimePrekeysFrom, null, 'none held');
    assertEqual(asLogin({ ok: true, userId: 'bob', queued: 2, oneTimePrekeys: 9, oneTimePrekeysFrom: 12 })?.oneTimePrekeysFrom, 12, 'lowest held');
    assertEqual(asUpload({ ok: true, oneTimePrekeys: 500, oneTimePrekeysFrom: 3, oneTimePrekeysKept: 40 })?.oneTimePrekeysKept, 40, 'kept');
    assertEqual(asSend({ ok: true, id: 7, duplicate: false })?.id, 7, 'send id');
    assertEqual(asStatuses({ statuses: [{ id: 1, status: 'delivered' }] })?.[0]?.status, 'delivered', 'status');
  },
  'an answer without the lowest prekey id (an older relay) says nothing about which keys are held': async () => {
    // Taken as "none held", every key would be forgotten a month on while the relay still hands them out.
    const old = asLogin({ ok: true, userId: 'bob', queued: 0, oneTimePrekeys: 40 });
    assert(old !== null, 'read');
    assertEqual(prekeysHeld(old), 'unknown', 'unknown, not none');
    const empty = asLogin({ ok: true, userId: 'bob', queued: 0, oneTimePrekeys: 0, oneTimePrekeysFrom: null });
    assert(empty !== null, 'read');
    assertEqual(prekeysHeld(empty), 'none', 'none held');
    const held = asLogin({ ok: true, userId: 'bob', queued: 0, oneTimePrekeys: 40, oneTimePrekeysFrom: 61 });
    assert(held !== null, 'read');
    assertEqual(JSON.stringify(prekeysHeld(held)), '{"from":61}', 'from');
    const upload = asUpload({ ok: true, oneTimePrekeys: 100 });
    assertEqual(upload?.oneTimePrekeysKept, null, 'kept unknown: taken as all kept');
  },
  'malformed answers are refused, not half-read': async () => {
    assertEqual(asLogin({ ok: true, userId: 'bob', queued: '2', oneTimePrekeys: 1 }), null, 'string count');
    assertEqual(asLogin({ ok: true, userId: 'bob', queued: 2, oneTimePrekeys: 1, oneTimePrekeysFrom: 'x' }), null, 'lowest id not a number');
    assertEqual(asUpload({ ok: true, oneTimePrekeys: 5, oneTimePrekeysFrom: 3, oneTimePrekeysKept: 'all' }), null, 'kept not a number');
    // Sliced from the end, a negative count would drop the newest keys, not the refused ones.
    assertEqual(asUpload({ ok: true, oneTimePrekeys: 5, oneTimePrekeysFrom: 3, oneTimePrekeysKept: -2 }), null, 'kept negative');
    assertEqual(asSend({ ok: true, id: 1.5, duplicate: false }), null, 'fractional id');
    assertEqual(asStatuses({ statuses: [{ id: 1, status: 'lost' }] }), null, 'unknown status');
  },
  'pushes keep only well-formed entries': async () => {
    const messages = asReceivedMessages({
      messages: [
        { id: 1, from: 'alice', receivedAt: 5, envelope: {} },
        { id: '2', from: 'alice', receivedAt: 5, envelope: {} },
        { id: 3, from: 'alice', receivedAt: 5 },
        null,
      ],
    });
    assertEqual(messages.length, 1, 'one valid message');
    assertEqual(asReceivedMessages([1, 2]).length, 0, 'an array is not a push');
    assertEqual(asReceipts({ receipts: [{ id: 1, clientId: 'x', to: 'bob' }, { id: 2 }] }).length, 1, 'one valid receipt');
  },
  'client ids are 22 characters of base64url, all different': async () => {
    const ids = new Set(Array.from({ length: 50 }, () => newClientId()));
    assertEqual(ids.size, 50, 'unique');
    for (const id of ids) assert(/^[A-Za-z0-9_-]{22}$/.test(id), `valid id ${id}`);
  },
  'errors keep stable codes and plain explanations': async () => {
    const limited = new RelayError('rate_limited', 'slow down', true, 2500);
    assertEqual(errorCode(limited), 'rate_limited', 'relay code');
    assert(explain(limited).includes('3 s'), 'retry time in words');
    const registrations = new RelayError('rate_limited', 'slow down', true, 600_000);
    assert(explainRegistration(registrations).includes('10 min'), 'a registration is not retried: the wait in minutes');
    assert(explainRegistration(new RelayError('user_taken', 'x', false)).includes('taken'), 'other refusals as usual');
    assert(explain(new RelayError('unknown_user', 'x', false), 'bob').includes('no user “bob”'), 'unknown user');
    assertEqual(errorCode(new AppError('key_changed')), 'key_changed', 'app code');
    assert(explainCode('too_large').includes('too large'), 'stored code explained');
    assert(explainCode('message_too_large').includes('too large'), 'stored app code explained');
    assertEqual(errorCode(new Error('x')), 'internal', 'unknown errors');
  },
});
