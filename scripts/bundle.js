// Bundles the CLI into dist/bundle/ (entry lockctl.js, plus chunks for what is imported lazily):
// one file to load at start instead of oclif's few hundred. Run by `npm run build` after tsc.
import {build} from 'esbuild'
import {readdirSync, readFileSync, rmSync} from 'node:fs'
import {createRequire} from 'node:module'
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

// The start-up snapshot's bundle (docs/startup.md): the same CLI as one CommonJS file that
// `node --build-snapshot` can evaluate (bin/snapshot.js turns it into the snapshot for the Node
// that runs it). Minified: V8 keeps the source in the snapshot, and a smaller heap loads sooner.
const snapshotDir = join(root, 'dist', 'snapshot')
// Everything in vendor/ is built below: nothing of an earlier build may linger there.
rmSync(join(snapshotDir, 'vendor'), {recursive: true, force: true})
// A snapshot has no import(): dynamic imports become requires, which the banner routes through
// the hooks (src/snapshot/hooks.ts), as do import.meta.url and oclif's __dirname.
const throughHooks = {
  supported: {'dynamic-import': false},
  define: {'import.meta.url': 'globalThis.__lockctlSnapshot.bundleUrl', __dirname: 'globalThis.__lockctlSnapshot.oclifDir'},
  banner: {js: 'var __lockctlBuiltinRequire = require; var require = (id) => (globalThis.__lockctlSnapshot?.require ?? __lockctlBuiltinRequire)(id);'},
}
/**
 * Packages oclif requires as it loads but that no command started from the snapshot uses on its
 * usual paths: help templates (ejs), finding commands by glob (tinyglobby, minimatch), reading other
 * plugins' settings (lilconfig), spinner frames, the engines check (turned off: semver), colour
 * conversion and emoji widths for wrapped error text. Every byte and object of the snapshot is
 * deserialized by every run (docs/startup.md), and these were a third of its source: in the
 * snapshot each is a stub (src/snapshot/lazy-module.ts) that loads the package, bundled beside it
 * in vendor/, the first time anything is read from it (the build's own uses included). What a stub
 * answers without loading, whether the package is an ES module (__esModule) and a function
 * (typeof), is read from the package here.
 */
/** vendor/ file name -> the package's entry, as esbuild resolved it from its importer. */
const lazyFiles = new Map()
const lazyPackages = {
  name: 'lazy-packages',
  setup(build) {
    const names = ['ejs', 'tinyglobby', 'minimatch', 'lilconfig', 'cli-spinners', 'semver', 'color-convert', 'emoji-regex']
    const filter = new RegExp(`^(${names.join('|')})$`)
    build.onResolve({filter}, async (args) => {
      if (args.pluginData?.lazy) return undefined
      const resolved = await build.resolve(args.path, {resolveDir: args.resolveDir, kind: args.kind, importer: args.importer, pluginData: {lazy: true}})
      if (resolved.errors.length > 0) return {errors: resolved.errors}
      let file = [...lazyFiles].find(([, path]) => path === resolved.path)?.[0]
      if (!file) {
        // (Two versions of one package, each from its own importers: one file each.)
        file = lazyFiles.has(`lazy-${args.path}.cjs`) ? `lazy-${args.path}-${lazyFiles.size}.cjs` : `lazy-${args.path}.cjs`
        lazyFiles.set(file, resolved.path)
      }
      return {path: resolved.path, namespace: 'lazy-package', pluginData: {file}}
    })
    build.onLoad({filter: /.*/, namespace: 'lazy-package'}, ({path, pluginData}) => {
      const real = createRequire(import.meta.url)(path)
      const shape = [JSON.stringify(pluginData.file), String(JSON.stringify(real.__esModule)), typeof real === 'function']
      return {contents: `module.exports = globalThis.__lockctlSnapshot.lazy(${shape.join(', ')})`, loader: 'js'}
    })
  },
}
await build({
  absWorkingDir: root,
  entryPoints: ['dist/snapshot/entry.js'],
  outfile: 'dist/snapshot/lockctl.cjs',
  bundle: true,
  minify: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // Left to node_modules (CommonJS, or vendored below): loaded only when a command needs them.
  // The server and the REPL never start from the snapshot (bin/lockctl sends them to bin/run.js).
  external: ['etcd3', 'cockatiel', 'prom-client', 'ora', '@inquirer/prompts', 'cli-table3', 'typescript', 'ts-node'],
  ...throughHooks,
  plugins: [
    {
      name: 'snapshot',
      setup(build) {
        // oclif imports the command module with import(), which a snapshot does not have.
        build.onLoad({filter: /@oclif[\\/]core[\\/]lib[\\/]module-loader\.js$/}, ({path}) => ({
          contents: readFileSync(path, 'utf8').replaceAll('await import(', 'await globalThis.__lockctlSnapshot.import('),
          loader: 'js',
        }))
        build.onLoad({filter: /dist[\\/](server[\\/]run|cli[\\/]repl)\.js$/}, () => ({
          contents: "throw new Error('the server and the REPL do not start from the snapshot (bin/lockctl)')",
          loader: 'js',
        }))
      },
    },
    lazyPackages,
  ],
  logLevel: 'warning',
})
// The packages left lazy above, each bundled as it is, for their stubs to load on first use.
for (const [file, path] of lazyFiles) {
  await build({absWorkingDir: root, entryPoints: [path], outfile: join(snapshotDir, 'vendor', file), bundle: true, minify: true, format: 'cjs', platform: 'node', target: 'node20', logLevel: 'warning'})
}
// The ES-module-only packages a hot command may need (a spinner, a password prompt), as CommonJS.
// The snapshot's `import(name)` became `require(name)` with module.exports as the default export
// (Node's rule for CommonJS): a package's own default export goes there, its other exports beside it.
for (const [name, file] of [['ora', 'ora.cjs'], ['@inquirer/prompts', 'inquirer-prompts.cjs']]) {
  const contents = `const exports = require(${JSON.stringify(name)}); module.exports = exports.default ? Object.assign(exports.default, exports) : exports`
  await build({absWorkingDir: root, stdin: {contents, resolveDir: root}, outfile: join(snapshotDir, 'vendor', file), bundle: true, minify: true, format: 'cjs', platform: 'node', target: 'node20', logLevel: 'warning'})
}
