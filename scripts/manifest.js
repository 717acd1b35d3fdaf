// Writes oclif.manifest.json so that oclif finds commands without importing every one of them
// at start-up. Same result as `oclif manifest`, without that package's dependency tree.
import {Plugin} from '@oclif/core'
import {writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const plugin = new Plugin({root, type: 'core', ignoreManifest: true, errorOnManifestCreate: true, isRoot: true})
await plugin.load()
writeFileSync(join(root, 'oclif.manifest.json'), JSON.stringify(plugin.manifest, null, 2))
console.log(`oclif.manifest.json: ${Object.keys(plugin.manifest.commands).length} commands`)
