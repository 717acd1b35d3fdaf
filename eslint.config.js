// Lint with type information (typescript-eslint's type-checked rules): style is checked, not
// remembered. Runs in `npm test` (pretest) over src/ and test/.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  {ignores: ['dist/**', 'node_modules/**', 'bench/**', '**/*.mjs', '**/*.js', 'vitest.config.ts']},
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {project: ['./tsconfig.test.json'], tsconfigRootDir: import.meta.dirname},
    },
    linterOptions: {reportUnusedDisableDirectives: 'error'},
    rules: {
      // Deliberate: fire-and-forget calls are marked with `void`; floating ones are bugs.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', {argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none'}],
      // Empty catch blocks say "already gone" / "best effort" in a comment where it matters.
      'no-empty': ['error', {allowEmptyCatch: true}],
      // Wire and file boundaries (msgpack, JSON) are `unknown`/`any` by nature; the code checks
      // what it reads there (protocol/validate.ts, the log's decode) instead of trusting types.
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // oclif's and Node's APIs ask for async functions that do not always await.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Tests pass methods to expect() and spies.
      '@typescript-eslint/unbound-method': 'off',
    },
  },
)
