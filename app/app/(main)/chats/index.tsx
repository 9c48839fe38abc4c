/** `/chats`: the conversation list on phones; on wide screens (list beside) a hint. */
import React from 'react';
import { Text } from 'react-native';

import { ConversationList } from '../../../src/ui/ConversationList';
import { Centered, useWide } from '../../../src/ui/layout';
import { useTheme } from '../../../src/ui/theme';

export default function Chats() {
  const t = useTheme();
  const wide = useWide();
  if (!wide) return <ConversationList />;
  return (
    <Centered>
      <Text style={{ color: t.muted }}>Choose a conversation, or start one with +.</Text>
    </Centered>
  );
}
