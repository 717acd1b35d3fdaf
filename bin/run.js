#!/usr/bin/env node
// oclif checks the engines of its own package.json with semver on import (~13 ms of every run);
// our package.json's engines already say which Node we need.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
// The bundled CLI (npm run build): oclif and every command in one module.
const {execute} = await import('../dist/bundle/lockctl.js')

await execute({dir: import.meta.url})
