/**
 * Small synchronous key-value storage for UI preferences (the settings store) in the
 * browser: `localStorage`. The phone build uses `kv.ts` (expo-sqlite's kv-store); Metro
 * picks this file for web. Messages never go here: they live in the engine's store.
 */
import type { StateStorage } from 'zustand/middleware';

export const kvStorage: StateStorage = {
  getItem: (name) => {
    try {
      return globalThis.localStorage?.getItem(name) ?? null;
    } catch {
      // Storage disabled (private mode, a sandboxed frame): preferences last one visit.
      return null;
    }
  },
  setItem: (name, value) => {
    try {
      globalThis.localStorage?.setItem(name, value);
    } catch {
      // Quota or disabled storage: the preference still holds for this visit.
    }
  },
  removeItem: (name) => {
    try {
      globalThis.localStorage?.removeItem(name);
    } catch {
      // As above: nothing to remove where nothing could be stored.
    }
  },
};
