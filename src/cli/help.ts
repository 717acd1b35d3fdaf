import {CommandHelp, Help, type Command} from '@oclif/core'
import {ExitCode} from './exit-codes.js'
import {unknownCommandMessage} from './unknown-command.js'

/**
 * oclif marks every argument of a non-strict command as variadic ("KEY..."); `hold` is
 * non-strict only to take a command after `--`, and its KEY is one word.
 */
class LockctlCommandHelp extends CommandHelp {
  protected args(args: Command.Arg.Any[]): [string, string | undefined][] | undefined {
    const command = this.command as {strict?: boolean}
    const strict = command.strict
    command.strict = true
    try {
      return super.args(args)
    } finally {
      command.strict = strict
    }
  }
}

export class LockctlHelp extends Help {
  protected CommandHelpClass = LockctlCommandHelp

  /**
   * Help for a command lockctl does not have (`help lokc`, `help lokc -h`) is the one line
   * `lockctl lokc` gives, exit 2: oclif threw "Command lokc not found", which it printed boxed.
   * The subject is found as oclif finds it: the first word before any other flag or `--`; the
   * words after it are not part of it (lockctl's commands have no topics).
   */
  async showHelp(argv: string[]): Promise<void> {
    let subject: string | undefined
    for (const arg of argv) {
      if (arg === '-h' || arg === '--help' || arg === 'help') continue
      if (arg !== '--' && !arg.startsWith('-')) subject = arg
      break
    }
    if (subject !== undefined && !this.config.findCommand(subject) && !this.config.findTopic(subject)) {
      process.stderr.write(`lockctl: ${unknownCommandMessage(subject, this.config.commandIDs)}\n`)
      process.exitCode = ExitCode.USAGE
      return
    }
    // The subject alone: oclif joins the words after it into one id ("server 1s" → "server:1s")
    // and threw "Command server:1s not found" for `lockctl server -h 1s`.
    await super.showHelp(subject === undefined ? [] : [subject])
  }
}
