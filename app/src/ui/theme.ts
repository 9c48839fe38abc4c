/**
 * Light and dark palettes and `useTheme()`, which every screen and component calls.
 * The choice (system, light, dark) lives in the settings store (`state/settings`);
 * "system" follows the device's (or the browser's) colour scheme.
 */
import { useColorScheme } from 'react-native';

import { useSettings } from '../state/settings';

export type Palette = {
  scheme: 'light' | 'dark';
  background: string;
  surface: string;
  surfaceAlt: string;
  text: string;
  muted: string;
  border: string;
  primary: string;
  onPrimary: string;
  mine: string;
  onMine: string;
  theirs: string;
  danger: string;
  online: string;
  mention: string;
  highlight: string;
  focus: string;
};

const light: Palette = {
  scheme: 'light',
  background: '#ffffff',
  surface: '#f4f5f7',
  surfaceAlt: '#e8eaee',
  text: '#17191c',
  muted: '#5c6370',
  border: '#d5d8de',
  primary: '#2f5bd3',
  onPrimary: '#ffffff',
  mine: '#2f5bd3',
  onMine: '#ffffff',
  theirs: '#eceef2',
  danger: '#b3261e',
  online: '#1f8a3b',
  mention: '#8a5a00',
  highlight: '#fff1b8',
  focus: '#2f5bd3',
};

const dark: Palette = {
  scheme: 'dark',
  background: '#121317',
  surface: '#1b1d22',
  surfaceAlt: '#262930',
  text: '#e9eaee',
  muted: '#a0a6b2',
  border: '#33363e',
  primary: '#7a9cff',
  onPrimary: '#0c1330',
  mine: '#3a5fc8',
  onMine: '#ffffff',
  theirs: '#262930',
  danger: '#ff8a80',
  online: '#4cc36c',
  mention: '#ffd166',
  highlight: '#4a3f12',
  focus: '#9db6ff',
};

export const palettes = { light, dark } as const;

/** The palette in force: the user's choice, or the system's scheme for "system". */
export function useTheme(): Palette {
  const system = useColorScheme();
  const choice = useSettings((s) => s.theme);
  const scheme = choice === 'system' ? (system === 'dark' ? 'dark' : 'light') : choice;
  return palettes[scheme];
}

export const space = { xs: 4, sm: 8, md: 12, lg: 16, xl: 24 } as const;
export const radius = { sm: 6, md: 10, lg: 16, round: 999 } as const;
export const font = { small: 12, body: 15, title: 18, big: 24 } as const;
