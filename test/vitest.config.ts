import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Integration files each start their own real servers (distribution, token endpoint,
// the mirror, dockerd…); two at a time fits this project's 2-core machines.
export default defineConfig({
  root: fileURLToPath(new URL('..', import.meta.url)),
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
    globalSetup: ['test/setup/install-tools.ts'],
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 120_000,
    hookTimeout: 300_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
  },
});
