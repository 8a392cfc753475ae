/** Words and times as the UI shows them. */

import type { Message } from '../store/store.js';

/** `12:04`, or `3 Mar, 12:04` when not today. */
export function formatTime(ms: number, now: number = Date.now()): string {
  const date = new Date(ms);
  const today = new Date(now).toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  return today ? time : `${date.toLocaleDateString([], { day: 'numeric', month: 'short' })}, ${time}`;
}

/** An outgoing message's status, in words. */
export function statusLabel(message: Message): string {
  switch (message.status) {
    case 'sending':
      return 'Sending';
    case 'stored':
      return 'Stored';
    case 'delivered':
      return 'Delivered';
    case 'failed':
      return 'Not sent';
    case 'received':
      return '';
  }
}

/** "1 message" / "3 messages". */
export function plural(count: number | bigint, word: string): string {
  return `${count} ${word}${count === 1 || count === 1n ? '' : 's'}`;
}
