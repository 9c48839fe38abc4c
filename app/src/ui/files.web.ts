/**
 * Files in the browser: pick with a file input (a File is a Blob the engine uploads as
 * is) and save an attachment through a download link of its bytes.
 */
import type { Engine, Media, UploadSource } from '../engine';

function choose(accept: string): Promise<UploadSource | null> {
  return new Promise((resolve) => {
    const input = document.createElement('input');
    input.type = 'file';
    input.accept = accept;
    input.style.display = 'none';
    input.setAttribute('data-testid', 'file-input');
    input.addEventListener('change', () => {
      const file = input.files?.[0];
      input.remove();
      resolve(file ? { kind: 'blob', blob: file, filename: file.name } : null);
    });
    input.addEventListener('cancel', () => {
      input.remove();
      resolve(null);
    });
    document.body.appendChild(input);
    input.click();
  });
}

export function pickImage(): Promise<UploadSource | null> {
  return choose('image/*');
}

export function pickFile(): Promise<UploadSource | null> {
  return choose('');
}

export async function saveAttachment(engine: Engine, media: Media): Promise<void> {
  const blob = await engine.download(media.id);
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = media.filename ?? media.id;
  document.body.appendChild(link);
  link.click();
  link.remove();
  // The click has started the download; the URL may go once the event loop turns.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
