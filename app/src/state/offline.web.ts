/**
 * Registers `public/sw.js`, which keeps the app shell so that a reload while offline still
 * opens the app (messages come from IndexedDB). Called once by the root layout; not in
 * development, where Metro serves changing bundles.
 */
export function registerOfflineShell(): void {
  if (__DEV__ || typeof navigator === 'undefined' || !('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register('/sw.js').catch((error: unknown) => {
    // Without it the app works the same online; only an offline reload would not open.
    console.warn('offline shell not installed:', error instanceof Error ? error.message : String(error));
  });
}
