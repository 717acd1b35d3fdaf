import {join} from 'node:path'
import {BaseCommand} from '../cli/base-command.js'
import {ownerFlag} from '../cli/flags.js'

export default class Repl extends BaseCommand {
  static summary = 'An interactive session that holds locks across commands.'
  static description = `Every CLI command works at the prompt (same flags, same help), sharing one connection: lock/unlock/renew need no token, \`hold KEY\` renews in the background and prints its events above the prompt, \`locks\` lists what the session holds, \`watch\` streams until Ctrl-C. Ctrl-C cancels the running command, never the REPL. exit or Ctrl-D releases what the session holds (asks first on a terminal); so do SIGTERM and SIGHUP, without asking (exit 128+N).
Piped input runs as a script: commands in order, nothing asked, errors with their line number, and the exit code of the first failing line. With --json every command answers with one JSON line.`

  static examples = ['<%= config.bin %> repl', "printf 'lock a\\nstatus\\nunlock a\\n' | <%= config.bin %> repl"]

  static flags = {
    owner: ownerFlag(),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Repl)
    const json = this.jsonEnabled()
    const client = await this.client(flags, {owner: flags.owner})
    const [{runRepl}, {stateDir}] = await Promise.all([import('../cli/repl.js'), import('../client/embedded.js')])
    process.exitCode = await runRepl(this.config, client, {
      input: process.stdin,
      output: process.stdout,
      historyFile: join(stateDir(), 'repl_history'),
      json,
    })
  }
}
