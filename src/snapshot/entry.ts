/**
 * The start-up snapshot's entry (docs/startup.md). `node --build-snapshot` runs this once, on the
 * user's machine, for the user's Node (bin/snapshot.js): it evaluates oclif, every command and the
 * client's modules on the hot path and loads the package's oclif manifest, and V8 saves the heap.
 * A run (bin/lockctl: `node --snapshot-blob BLOB ROOT ARGS...`) starts from that heap and only runs
 * the command.
 *
 * Nothing evaluated here may depend on the run: no environment, terminal, clock or working
 * directory is read at module level (the project's rule anyway: no module-level state).
 */
// First: every module below reaches Node through the hooks this installs.
import './build-hooks.js'
import {installHooks} from './hooks.js'
import {resolve} from 'node:path'
import v8 from 'node:v8'
import {Config, type Interfaces, Plugin} from '@oclif/core'
import * as cli from '../cli/commands.js'
// Imported lazily by the commands; evaluated now so that a run finds them ready.
import '../client/lock-client.js'
import '../cli/profiles.js'
import {warmUp} from './warm-up.js'

// The root plugin (package.json and oclif.manifest.json read and parsed) as oclif would load it
// at the start of every run. The snapshot is taken once the event loop is empty, after this.
const rootPlugin = new Plugin({root: process.env.LOCKCTL_SNAPSHOT_ROOT!, isRoot: true, type: 'core'})
let loaded = false
void rootPlugin.load().then(async () => {
  // bin/snapshot.js starts a throw-away lockd for the build and names it here.
  const warmUpEndpoint = process.env.LOCKCTL_SNAPSHOT_WARM_UP
  if (warmUpEndpoint) {
    prepareRun(rootPlugin.root)
    await warmUp(cli, warmUpEndpoint, loadOptions(rootPlugin.root))
  }
  loaded = true
})

v8.startupSnapshot.setDeserializeMainFunction(() => {
  // bin/lockctl passes the package root first.
  const launcherRoot = process.argv.splice(1, 1)[0]
  if (!loaded || !launcherRoot) throw new Error('lockctl: the start-up snapshot is incomplete; rebuild it with `npm rebuild lockctl`')
  const root = resolve(launcherRoot)
  prepareRun(root)
  rootPlugin.root = root
  void cli.execute({args: process.argv.slice(1), loadOptions: loadOptions(root)}).then(() => {
    // As bin/run.js: whatever a library leaves pending must not keep a script waiting.
    setTimeout(() => process.exit(), 1000).unref()
  })
})

/** oclif's options for a run from `root`: the root plugin is the one already loaded. */
function loadOptions(root: string): Interfaces.LoadOptions {
  return {root, plugins: new Map([[rootPlugin.name, rootPlugin]])}
}

/** What a run of the CLI needs before oclif starts (a run, and the build's warm-up). */
function prepareRun(root: string): void {
  // oclif's import of the command module must find the commands this bundle holds.
  installHooks(root, () => cli)
  // oclif read it as it loaded, in the build (./build-hooks.ts); set as bin/run.js sets it, so the
  // command `hold` runs gets the same environment from either start.
  process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
  cli.settings.enableAutoTranspile = false
  // A theme colours oclif's help and messages: help takes the ordinary start, and the snapshot's
  // oclif never colours (docs/startup.md). Reading theme.json would only cost a file read per run.
  ;(Config.prototype as unknown as {loadTheme(): Promise<undefined>}).loadTheme = async () => undefined
}
