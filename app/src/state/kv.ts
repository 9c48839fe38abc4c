/**
 * Small synchronous key-value storage for UI preferences (the settings store) on
 * phones: expo-sqlite's kv-store, a table in its own database file. The browser build
 * uses `kv.web.ts` (localStorage). Messages never go here: they live in the engine's store.
 */
import Storage from 'expo-sqlite/kv-store';
import type { StateStorage } from 'zustand/middleware';

export const kvStorage: StateStorage = {
  getItem: (name) => Storage.getItemSync(name),
  setItem: (name, value) => Storage.setItemSync(name, value),
  removeItem: (name) => {
    Storage.removeItemSync(name);
  },
};
