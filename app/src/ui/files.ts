/**
 * Files on phones: pick an image (expo-image-picker) or any file (expo-document-picker)
 * as an engine `UploadSource`, and save a downloaded attachment (expo-file-system into
 * the cache, then the share sheet). The browser build uses `files.web.ts`.
 */
import { Directory, File, Paths } from 'expo-file-system';
import * as DocumentPicker from 'expo-document-picker';
import * as ImagePicker from 'expo-image-picker';
import * as Sharing from 'expo-sharing';

import type { Engine, Media, UploadSource } from '../engine';

export async function pickImage(): Promise<UploadSource | null> {
  const result = await ImagePicker.launchImageLibraryAsync({ mediaTypes: ['images'], quality: 0.9 });
  const asset = result.canceled ? undefined : result.assets[0];
  if (!asset) return null;
  return { kind: 'uri', uri: asset.uri, contentType: asset.mimeType ?? 'image/jpeg', filename: asset.fileName ?? undefined };
}

export async function pickFile(): Promise<UploadSource | null> {
  const result = await DocumentPicker.getDocumentAsync({ copyToCacheDirectory: true, multiple: false });
  const asset = result.canceled ? undefined : result.assets[0];
  if (!asset) return null;
  return { kind: 'uri', uri: asset.uri, contentType: asset.mimeType ?? 'application/octet-stream', filename: asset.name };
}

export async function saveAttachment(engine: Engine, media: Media): Promise<void> {
  const source = await engine.mediaSource(media.id);
  const folder = new Directory(Paths.cache, 'downloads');
  if (!folder.exists) folder.create();
  const name = (media.filename ?? media.id).replace(/[/\\]/g, '_');
  const target = new File(folder, name);
  if (target.exists) target.delete();
  const file = await File.downloadFileAsync(source.uri, target, { headers: source.headers });
  if (await Sharing.isAvailableAsync()) await Sharing.shareAsync(file.uri, { mimeType: media.content_type });
}
