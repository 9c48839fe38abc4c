/** Push in the browser: none (Expo push is for phones); the root layout renders this. */
export function PushRegistration() {
  return null;
}

export async function unregisterPush(): Promise<void> {}
