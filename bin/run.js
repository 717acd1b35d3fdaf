#!/usr/bin/env node
// oclif checks the engines of its own package.json with semver on import (~13 ms of every run);
// our package.json's engines already say which Node we need.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
const {execute} = await import('@oclif/core')

await execute({dir: import.meta.url})
