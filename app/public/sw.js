/*
 * The app's service worker (browser only; registered by src/state/offline.web.ts): keeps
 * the app shell (index.html and the export's hashed scripts and assets) so that a reload
 * while offline still opens the app, which then reads its messages from IndexedDB.
 * It never touches the API: /v1/..., /healthz and the WebSocket always go to the network.
 * Bounded: after each successful load of index.html, cached assets that page no longer
 * names are deleted.
 */
const CACHE = 'messageai-shell-v1';
const SHELL = '/index.html';

function isApi(url) {
  return url.pathname.startsWith('/v1/') || url.pathname === '/v1' || url.pathname === '/healthz';
}

function assetsOf(html) {
  const out = new Set();
  for (const m of html.matchAll(/(?:src|href)="(\/[^"]+)"/g)) {
    const path = m[1];
    if (path.startsWith('/_expo/') || path.startsWith('/assets/') || path === '/favicon.ico') out.add(path);
  }
  return out;
}

async function refreshShell() {
  const cache = await caches.open(CACHE);
  const response = await fetch(SHELL, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`index.html: HTTP ${response.status}`);
  const html = await response.clone().text();
  await cache.put(SHELL, response);
  const wanted = assetsOf(html);
  await Promise.all(
    [...wanted].map(async (path) => {
      if (!(await cache.match(path))) {
        const asset = await fetch(path);
        if (asset.ok) await cache.put(path, asset);
      }
    }),
  );
  // Drop what an older export named: the cache holds one export's files at a time.
  for (const request of await cache.keys()) {
    const path = new URL(request.url).pathname;
    if (path !== SHELL && path.startsWith('/_expo/') && !wanted.has(path)) await cache.delete(request);
  }
  return html;
}

self.addEventListener('install', (event) => {
  event.waitUntil(refreshShell().then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || isApi(url)) return;

  if (request.mode === 'navigate') {
    // Every client-side route is the same index.html: the network's, else the kept one.
    event.respondWith(
      fetch(request).then(
        (response) => {
          if (response.ok) event.waitUntil(refreshShell().catch(() => undefined));
          return response;
        },
        async () => (await caches.match(SHELL)) || Response.error(),
      ),
    );
    return;
  }

  if (url.pathname.startsWith('/_expo/') || url.pathname.startsWith('/assets/')) {
    // Hashed names never change content: the kept copy is as good as the network's.
    event.respondWith(
      caches.match(url.pathname).then(
        (hit) =>
          hit ||
          fetch(request).then(async (response) => {
            if (response.ok) {
              const cache = await caches.open(CACHE);
              await cache.put(url.pathname, response.clone());
            }
            return response;
          }),
      ),
    );
  }
});
