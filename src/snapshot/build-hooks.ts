/**
 * Installs the snapshot's hooks (./hooks.ts) for the root the snapshot is being built for, before
 * any other module of the bundle is evaluated: the entry imports this module first. Some modules
 * read files beside themselves as they load (the package version), through those hooks.
 * Also before oclif loads: its check of its own engines (which runs once, as it loads) is turned
 * off as bin/run.js turns it off; here it would also leave semver's regular expressions in the
 * snapshot, 320 KB that every run deserializes.
 */
import {installHooks} from './hooks.js'

const root = process.env.LOCKCTL_SNAPSHOT_ROOT
if (!root) throw new Error('LOCKCTL_SNAPSHOT_ROOT: the package root to build the snapshot for')
installHooks(root, () => {
  throw new Error('the commands are not imported while the snapshot is built')
})
process.env.OCLIF_DISABLE_ENGINE_WARNING = '1'
