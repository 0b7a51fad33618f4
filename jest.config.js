/** Unit and integration tests run in parallel; the guest e2e suite is heavy and runs in band at the end. */
module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json', diagnostics: { warnOnly: false } }] },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  moduleFileExtensions: ['ts', 'js', 'json', 'node'],
  maxWorkers: 2,
  testTimeout: 30000,
};
