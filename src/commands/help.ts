import {Args, Command, loadHelpClass} from '@oclif/core'
import {reportError} from '../cli/base-command.js'
import {ExitCode} from '../cli/exit-codes.js'
import {unknownCommandMessage} from '../cli/unknown-command.js'

/** `lockctl help [COMMAND]`: the same help as `--help` and `-h`. */
export default class Help extends Command {
  static summary = 'Show help for lockctl or one of its commands.'
  static strict = false
  static args = {command: Args.string({description: 'the command to explain', required: false})}

  async run(): Promise<void> {
    const {argv} = await this.parse(Help)
    const [asked] = argv as string[]
    // oclif's own answer was a boxed " ›   Error: Command nope not found.": the line `lockctl nope` gives.
    if (asked !== undefined && !asked.startsWith('-') && !this.config.commandIDs.includes(asked)) {
      process.stderr.write(`lockctl: ${unknownCommandMessage(asked, this.config.commandIDs)}\n`)
      process.exitCode = ExitCode.USAGE
      return
    }
    const HelpClass = await loadHelpClass(this.config)
    await new HelpClass(this.config).showHelp(argv as string[])
  }

  async catch(error: Error): Promise<void> {
    reportError(this, error)
  }
}
