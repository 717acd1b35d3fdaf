import {CommandHelp, Help, type Command} from '@oclif/core'

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
}
