/**
 * What a sender reads under their own message, from its delivery state and receipt
 * (the nine-step send's `sending -> sent -> read`, "read by 2 of 4" in groups). Pure,
 * so jest tests it; `MessageRow` shows it.
 */
import type { LocalMessage, Receipt } from '../engine';

export function statusText(message: LocalMessage, receipt: Receipt | null, online: boolean): string {
  if (message.status === 'failed') return `Not sent: ${message.error ?? 'refused by the server'}`;
  if (message.status === 'sending') return online ? 'Sending…' : 'Queued (offline)';
  if (receipt === null) return 'Sent';
  if (receipt.of > 1) return receipt.readBy > 0 ? `Read by ${receipt.readBy} of ${receipt.of}` : 'Sent';
  return receipt.readBy > 0 ? 'Read' : 'Sent';
}
