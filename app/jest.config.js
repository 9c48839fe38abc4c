// Engine unit tests: jest-expo's node preset (no DOM, no native modules); the
// tests that touch the network need MESSAGEAI_TEST_URL, set by
// tests/test_app_engine.py after it starts the real server. One worker: the
// reconnect test stops and restarts that one server, which tests running
// beside it in another worker would see as a failure of their own.
module.exports = {
  preset: 'jest-expo/node',
  roots: ['<rootDir>/src'],
  testMatch: ['**/__tests__/**/*.test.ts'],
  testTimeout: 90000,
  maxWorkers: 1,
};
