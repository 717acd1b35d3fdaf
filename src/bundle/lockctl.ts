/**
 * The CLI as one module (bundled by scripts/bundle.js into dist/bundle/lockctl.js): oclif, its
 * dependencies and every command, so that a run loads one file instead of a few hundred.
 * oclif finds the commands through COMMANDS (its "explicit" strategy) in this same module, and
 * the command-not-found hook through commandNotFound; heavy modules stay lazy (separate chunks,
 * or left to node_modules: etcd3, prom-client, prompts, spinners, tables).
 * The hot commands usually start from a V8 snapshot instead (docs/startup.md).
 */
export * from '../cli/commands.js'
