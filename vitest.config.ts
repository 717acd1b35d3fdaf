import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration and e2e files spawn real processes; two cores do not gain from more workers.
    maxWorkers: 2,
    reporters: process.env.CI ? ['default', ['json', {outputFile: '.ci/results.json'}]] : ['default'],
  },
})
