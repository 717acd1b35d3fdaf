import {readFileSync} from 'node:fs'

/**
 * The package version, read once from the nearest package.json above this module: src/ under
 * vitest, dist/ as compiled, dist/bundle/ as bundled.
 */
export const VERSION: string = readVersion()

function readVersion(): string {
  for (let up = '../'; up.length <= 12; up += '../') {
    try {
      const pjson = JSON.parse(readFileSync(new URL(`${up}package.json`, import.meta.url), 'utf8')) as {name?: string; version?: string}
      if (pjson.name === 'lockctl' && pjson.version) return pjson.version
    } catch {}
  }
  return 'unknown'
}
