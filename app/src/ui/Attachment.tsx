/**
 * One attachment of a message: an image shown inline (the bytes fetched with the
 * bearer token by the engine: an object URL in the browser, a uri with headers on
 * phones), any other file as its name and size with a download button.
 */
import React, { useEffect, useState } from 'react';
import { Image, Pressable, StyleSheet, Text, View } from 'react-native';

import { describe, useEngine } from '../state/session';
import { useMediaInfo, useMediaSource } from '../state/queries';
import { saveAttachment } from './files';
import { fileSize } from './text';
import { font, radius, space, useTheme } from './theme';

const INLINE_IMAGE = /^image\/(png|jpeg|gif|webp)$/;

export function Attachment({ mediaId, onDark }: { mediaId: string; onDark: boolean }) {
  const t = useTheme();
  const engine = useEngine();
  const info = useMediaInfo(mediaId);
  const media = info.data;
  const image = media !== undefined && INLINE_IMAGE.test(media.content_type);
  const source = useMediaSource(mediaId, image);
  const [error, setError] = useState<string | null>(null);
  const [size, setSize] = useState<{ width: number; height: number } | null>(null);
  const uri = source.data?.uri;
  const headers = source.data?.headers;

  // Show the picture in its own proportions, at most 260 wide and 320 high.
  useEffect(() => {
    if (!uri) return;
    let live = true;
    const fit = (w: number, h: number) => {
      if (!live || w <= 0 || h <= 0) return;
      const scale = Math.min(1, 260 / w, 320 / h);
      setSize({ width: Math.max(48, Math.round(w * scale)), height: Math.max(48, Math.round(h * scale)) });
    };
    const failed = () => undefined;
    if (headers) Image.getSizeWithHeaders(uri, headers, fit, failed);
    else Image.getSize(uri, fit, failed);
    return () => {
      live = false;
    };
  }, [uri, headers]);
  const name = media?.filename ?? 'attachment';
  const color = onDark ? '#ffffff' : t.text;

  async function save() {
    if (!media) return;
    setError(null);
    try {
      await saveAttachment(engine, media);
    } catch (e) {
      setError(describe(e));
    }
  }

  if (info.error) {
    return <Text style={{ color, fontStyle: 'italic' }}>Attachment not available ({describe(info.error)})</Text>;
  }
  if (image && source.data) {
    return (
      <Pressable accessibilityRole="imagebutton" accessibilityLabel={`Image ${name}; press to download`} onPress={() => void save()}>
        <Image
          source={{ uri: source.data.uri, headers: source.data.headers }}
          style={[styles.image, size, { backgroundColor: t.surfaceAlt }]}
          resizeMode="cover"
          accessibilityLabel={`Image ${name}`}
          testID={`image-${mediaId}`}
        />
      </Pressable>
    );
  }
  return (
    <View style={[styles.file, { borderColor: onDark ? 'rgba(255,255,255,0.4)' : t.border }]}>
      <Text style={{ color, flexShrink: 1 }} numberOfLines={1}>
        {name}
        {media ? ` · ${fileSize(media.size)}` : ''}
      </Text>
      <Pressable accessibilityRole="button" accessibilityLabel={`Download ${name}`} onPress={() => void save()} disabled={!media}>
        <Text style={{ color: onDark ? '#ffffff' : t.primary, fontWeight: '600', textDecorationLine: 'underline' }}>Download</Text>
      </Pressable>
      {error ? <Text style={{ color: t.danger, fontSize: font.small }}>{error}</Text> : null}
    </View>
  );
}

const styles = StyleSheet.create({
  image: { width: 240, height: 180, borderRadius: radius.md, marginVertical: space.xs },
  file: {
    flexDirection: 'row',
    alignItems: 'center',
    gap: space.sm,
    borderWidth: 1,
    borderRadius: radius.sm,
    paddingHorizontal: space.sm,
    paddingVertical: space.xs,
    marginVertical: space.xs,
  },
});
