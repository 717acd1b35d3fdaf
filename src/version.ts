import {readFileSync} from 'node:fs'

/** The package version, read once (works from src/ under vitest and from dist/). */
export const VERSION: string = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version
