// Jest runs the TypeScript tests as ES modules through SWC (NODE_OPTIONS=--experimental-vm-modules,
// set by `npm test`). The server under test runs as its own process on Node's type stripping.
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': ['@swc/jest', {
      jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
      module: { type: 'es6' },
    }],
  },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // One migrated database per run, copied by every workspace (test/helpers/template.ts).
  globalSetup: '<rootDir>/test/helpers/global-setup.ts',
  globalTeardown: '<rootDir>/test/helpers/global-teardown.ts',
  testTimeout: 120_000,
  // More files than cores: a test file spends part of its time waiting on its servers (key
  // schedules, refetch cooldowns, client timeouts); with two files at once on two cores the
  // suite used about 1.3 of them, with three it fills the waits.
  maxWorkers: 3,
};
