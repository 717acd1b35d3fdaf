// Bundles the CLI into dist/bundle/ (entry lockctl.js, plus chunks for what is imported lazily):
// one file to load at start instead of oclif's few hundred. Run by `npm run build` after tsc.
import {build} from 'esbuild'
import {readdirSync, rmSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
// Chunks of an earlier build would linger: keep only what tsc just wrote (the entry's sources).
for (const name of readdirSync(join(root, 'dist', 'bundle'))) if (!name.startsWith('lockctl.')) rmSync(join(root, 'dist', 'bundle', name))
await build({
  absWorkingDir: root,
  entryPoints: {lockctl: 'dist/bundle/lockctl.js'},
  outdir: 'dist/bundle',
  allowOverwrite: true,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Loaded only on their own paths, and some read their own files at run time: left to node_modules.
  external: ['etcd3', 'cockatiel', 'prom-client', '@inquirer/prompts', 'ora', 'cli-table3', 'typescript', 'ts-node'],
  // oclif is CommonJS: give its code `require`, and a __dirname under its own package, which it
  // uses only to read its package.json (with a fallback).
  banner: {
    js: [
      "import {createRequire as __lockctlCreateRequire} from 'node:module'",
      "import {dirname as __lockctlDirname} from 'node:path'",
      'const require = __lockctlCreateRequire(import.meta.url)',
      "const __dirname = __lockctlDirname(require.resolve('@oclif/core/package.json')) + '/lib'",
      "const __filename = __dirname + '/index.js'",
    ].join('\n'),
  },
  logLevel: 'warning',
})
