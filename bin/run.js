#!/usr/bin/env node
// oclif checks the engines of its own package.json with semver on import (~13 ms of every run);
// our package.json's engines already say which Node we need.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
// `--version --json`: the version as JSON, as every other answer can be (oclif prints text).
const args = process.argv.slice(2)
if (args.length === 2 && args.includes('--version') && args.includes('--json')) {
  const {readFileSync} = await import('node:fs')
  const {version} = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))
  process.stdout.write(`${JSON.stringify({version, node: process.version, platform: `${process.platform}-${process.arch}`})}\n`)
  process.exit(0)
}
// The bundled CLI (npm run build): oclif and every command in one module.
const {execute} = await import('../dist/bundle/lockctl.js')

await execute({dir: import.meta.url})
