import {Args, Command, loadHelpClass} from '@oclif/core'
import {reportError} from '../cli/base-command.js'

/** `lockctl help [COMMAND]`: the same help as `--help` and `-h`. */
export default class Help extends Command {
  static summary = 'Show help for lockctl or one of its commands.'
  static strict = false
  static args = {command: Args.string({description: 'the command to explain', required: false})}

  async run(): Promise<void> {
    const {argv} = await this.parse(Help)
    const HelpClass = await loadHelpClass(this.config)
    await new HelpClass(this.config).showHelp(argv as string[])
  }

  async catch(error: Error): Promise<void> {
    reportError(this, error)
  }
}
