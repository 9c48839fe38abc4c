/** `/`: sends a person to the screen they need first (server, sign in, or the chats). */
import { Redirect } from 'expo-router';
import React from 'react';

import { useSession } from '../src/state/session';
import { Loading } from '../src/ui/layout';

export default function Home() {
  const phase = useSession((s) => s.phase);
  if (phase === 'booting') return <Loading />;
  if (phase === 'server') return <Redirect href="/server" />;
  if (phase === 'signin') return <Redirect href="/sign-in" />;
  return <Redirect href="/chats" />;
}
