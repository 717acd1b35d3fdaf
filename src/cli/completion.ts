/**
 * Shell completion scripts for bash, zsh and fish: commands and their flags from the CLI's own
 * metadata, keys from the lock service (`lockctl status --keys`, with a 1 s deadline).
 */

export interface CommandFlags {
  id: string
  summary: string
  flags: string[]
}

const KEYED = ['hold', 'lock', 'renew', 'status', 'unlock', 'watch']
/** Key names, one per line: a key may hold spaces (the table's columns would split it). */
const KEYS = 'lockctl status --keys --timeout 1s 2>/dev/null'

export function completionScript(shell: 'bash' | 'zsh' | 'fish', commands: CommandFlags[]): string {
  const ids = commands.map((c) => c.id).sort()
  if (shell === 'fish') {
    const lines = ['# lockctl completion for fish: lockctl completion fish > ~/.config/fish/completions/lockctl.fish', 'complete -c lockctl -f']
    for (const c of commands) lines.push(`complete -c lockctl -n '__fish_use_subcommand' -a ${c.id} -d ${fishQuote(c.summary)}`)
    for (const c of commands) for (const flag of c.flags) lines.push(`complete -c lockctl -n '__fish_seen_subcommand_from ${c.id}' -l ${flag}`)
    lines.push(`complete -c lockctl -n '__fish_seen_subcommand_from ${KEYED.join(' ')}; and not string match -q -- "-*" (commandline -ct)' -a '(${KEYS})'`)
    return `${lines.join('\n')}\n`
  }
  const flagCases = commands.map((c) => `      ${c.id}) flags="${c.flags.map((f) => `--${f}`).join(' ')}" ;;`).join('\n')
  const body = `_lockctl() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmd="\${COMP_WORDS[1]}" flags
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "${ids.join(' ')}" -- "$cur") )
    return
  fi
  case "$cur" in
    -*)
      case "$cmd" in
${flagCases}
      esac
      COMPREPLY=( $(compgen -W "$flags" -- "$cur") )
      return ;;
  esac
  case "$cmd" in
    ${KEYED.join('|')})
      # Each key whole (spaces and quotes too), escaped for the command line; what was typed
      # is compared without its backslashes ("release\\ tr" completes "release train").
      local key typed="\${cur//\\\\/}"
      COMPREPLY=()
      while IFS= read -r key; do
        [[ "$key" == "$typed"* ]] && COMPREPLY+=( "$(printf '%q' "$key")" )
      done < <(${KEYS}) ;;
  esac
}
complete -F _lockctl lockctl
`
  if (shell === 'zsh') {
    return `# lockctl completion for zsh: echo 'source <(lockctl completion zsh)' >> ~/.zshrc\nautoload -U +X bashcompinit && bashcompinit\n${body}`
  }
  return `# lockctl completion for bash: echo 'source <(lockctl completion bash)' >> ~/.bashrc\n${body}`
}

function fishQuote(text: string): string {
  return `'${text.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`
}
