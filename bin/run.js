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
// `--help --json` (or -h): the command's description from the manifest, as JSON.
if (args.includes('--json') && (args.includes('--help') || args.includes('-h'))) {
  const {readFileSync} = await import('node:fs')
  const {commands} = JSON.parse(readFileSync(new URL('../oclif.manifest.json', import.meta.url), 'utf8'))
  const id = args.find((a) => !a.startsWith('-'))
  const pick = ({id, summary, description, usage, args, flags, examples}) => ({id, summary, description, usage, args, flags, examples})
  const answer = id && commands[id] ? pick(commands[id]) : {commands: Object.values(commands).map(({id, summary}) => ({id, summary}))}
  process.stdout.write(`${JSON.stringify(answer)}\n`)
  process.exit(id && !commands[id] ? 2 : 0)
}
// The bundled CLI (npm run build): oclif and every command in one module.
const {execute, settings} = await import('../dist/bundle/lockctl.js')
// The built CLI never looks for TypeScript sources, whatever NODE_ENV says (oclif would under
// NODE_ENV=development or test, and fail on src/*.ts): bin/dev.js is for that.
settings.enableAutoTranspile = false

// No user-installed oclif plugins (lockctl has none to offer): oclif would otherwise read
// ~/.local/share/lockctl/package.json on every run, and warn with a stack-less "(node) [EACCES]"
// line wherever HOME cannot be read (a service user, ProtectHome=).
const {fileURLToPath} = await import('node:url')
await execute({loadOptions: {root: fileURLToPath(import.meta.url), userPlugins: false}})
// The command is over and its answer written (stdout and stderr are synchronous on Linux for
// files, pipes and terminals). What is left should end by itself at once; a call that a client
// library leaves pending after its server died (seen with gRPC after an etcd member was killed)
// must not keep a script or a cron job waiting: exit within a second whatever is left. The
// timer is unref'd, so it never delays a process that has nothing left to do.
setTimeout(() => process.exit(), 1000).unref()
