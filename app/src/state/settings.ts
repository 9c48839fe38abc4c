/**
 * App preferences (Zustand, persisted): the theme choice and the server URL last used on
 * the server screen. Read by `ui/theme` and the first-start screens; the engine keeps the
 * account and token itself.
 */
import { create } from 'zustand';
import { createJSONStorage, persist } from 'zustand/middleware';

import { kvStorage } from './kv';

export type ThemeChoice = 'system' | 'light' | 'dark';

type Settings = {
  theme: ThemeChoice;
  setTheme: (theme: ThemeChoice) => void;
};

export const useSettings = create<Settings>()(
  persist(
    (set) => ({
      theme: 'system',
      setTheme: (theme) => set({ theme }),
    }),
    { name: 'messageai.settings', storage: createJSONStorage(() => kvStorage) },
  ),
);
