import { normalizeServerUrl } from '../engine';
import { EngineError } from '../errors';

test('a server address gets a scheme and loses its trailing slash', () => {
  expect(normalizeServerUrl('192.168.1.20:8080/')).toBe('http://192.168.1.20:8080');
  expect(normalizeServerUrl(' https://chat.example.org ')).toBe('https://chat.example.org');
});

test('an address that is not http(s) is refused with a reason', () => {
  expect(() => normalizeServerUrl('ftp://x')).toThrow(EngineError);
  expect(() => normalizeServerUrl('http://')).toThrow(/not a server address/);
});
