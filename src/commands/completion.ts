import {Args, Command} from '@oclif/core'
import {reportError} from '../cli/base-command.js'
import {completionScript} from '../cli/completion.js'
import {UsageError} from '../cli/usage-error.js'

export default class Completion extends Command {
  static summary = 'Print a shell completion script (bash, zsh or fish).'
  static description = `Completes commands, flags, and key names from the lock service. Install it once:
  bash:  echo 'source <(lockctl completion bash)' >> ~/.bashrc
  zsh:   echo 'source <(lockctl completion zsh)' >> ~/.zshrc
  fish:  lockctl completion fish > ~/.config/fish/completions/lockctl.fish`

  static args = {shell: Args.string({description: 'bash, zsh or fish', required: true, options: ['bash', 'zsh', 'fish']})}

  async run(): Promise<void> {
    const {args} = await this.parse(Completion)
    if (args.shell !== 'bash' && args.shell !== 'zsh' && args.shell !== 'fish') throw new UsageError(`SHELL: ${JSON.stringify(args.shell)} is not bash, zsh or fish`)
    const commands = this.config.commands
      .filter((c) => !c.hidden)
      .map((c) => ({
        id: c.id,
        summary: c.summary ?? '',
        flags: Object.entries(c.flags)
          .filter(([, flag]) => !flag.hidden)
          .map(([name]) => name)
          .sort(),
      }))
    process.stdout.write(completionScript(args.shell, commands))
  }

  async catch(error: Error): Promise<void> {
    reportError(this, error)
  }
}
