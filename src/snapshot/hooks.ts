/**
 * What the snapshot bundle (dist/snapshot/lockctl.cjs) reaches through instead of Node's module
 * system, which a program started from a V8 snapshot does not fully have (docs/startup.md):
 * `require` of packages left out of the snapshot, oclif's `import()` of the command module, and the
 * values the ESM build takes from `import.meta.url` and oclif from `__dirname`.
 *
 * The bundle's banner routes every `require` here, and esbuild replaces `import.meta.url` and
 * `__dirname` with reads of these hooks; they live on globalThis because the bundle's banner and
 * replaced expressions can only name a global. Set first while the snapshot is built (for the
 * build's own root), and again by the run, which may find the package somewhere else.
 */
import {createRequire} from 'node:module'
import {dirname, join} from 'node:path'
import {pathToFileURL} from 'node:url'
import {lazyModule} from './lazy-module.js'

export interface SnapshotHooks {
  require(id: string): unknown
  /** A package the snapshot holds only a stub of (./lazy-module.ts), from dist/snapshot/vendor/FILE on first use. */
  lazy(file: string, esModule: unknown, callable: boolean): unknown
  import(url: string): Promise<unknown>
  /** Where import.meta.url points in the ESM build: dist/bundle/lockctl.js, to find files beside it. */
  readonly bundleUrl: string
  /** dist/snapshot/vendor/ of the package this run is from. */
  readonly vendorDir: string
  /** @oclif/core's lib/ directory, which oclif reads its own package.json from. */
  readonly oclifDir: string
}

declare global {
  var __lockctlSnapshot: SnapshotHooks
}

/** Packages that are ES modules only: a snapshot can `require` them only as a CommonJS copy built beside it. */
const VENDORED: Record<string, string> = {ora: 'ora.cjs', '@inquirer/prompts': 'inquirer-prompts.cjs'}

export function installHooks(root: string, commandModule: () => unknown): void {
  const packageRequire = createRequire(join(root, 'package.json'))
  const bundleUrl = pathToFileURL(join(root, 'dist', 'bundle', 'lockctl.js')).href
  let oclifDir: string | undefined
  globalThis.__lockctlSnapshot = {
    require: (id) => packageRequire(id in VENDORED ? join(root, 'dist', 'snapshot', 'vendor', VENDORED[id]) : id),
    // Made while the snapshot is built; loads through the hooks of the run that first uses it.
    lazy: (file, esModule, callable) => lazyModule(() => globalThis.__lockctlSnapshot.require(join(globalThis.__lockctlSnapshot.vendorDir, file)), {esModule, callable}),
    vendorDir: join(root, 'dist', 'snapshot', 'vendor'),
    // oclif imports the module package.json names (dist/bundle/lockctl.js) to find the commands:
    // the snapshot already holds that module's contents.
    import: async (url) => {
      if (url === bundleUrl) return commandModule()
      throw new Error(`lockctl's start-up snapshot cannot import ${url} (only ${bundleUrl})`)
    },
    bundleUrl,
    get oclifDir() {
      return (oclifDir ??= join(dirname(packageRequire.resolve('@oclif/core/package.json')), 'lib'))
    },
  }
}
