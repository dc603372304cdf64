import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.spec.ts'],
    // The default `forks` pool: native addons in worker threads can crash on exit.
    pool: 'forks',
    testTimeout: 60_000,
  },
})
