/** The browser's offline app shell (a service worker); phones keep the app installed. */
export function registerOfflineShell(): void {}
