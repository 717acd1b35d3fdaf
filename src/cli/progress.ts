/**
 * A spinner on stderr while waiting, only when stderr is a terminal and output is not JSON.
 * ora is imported only when a spinner is really shown (it costs start-up time otherwise).
 */
export interface Progress {
  show(text: string): void
  stop(): void
}

export function createProgress(enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY) return {show() {}, stop() {}}
  let spinner: {text: string; stop(): void; start(): void} | null = null
  let stopped = false
  let pending: Promise<void> | null = null
  return {
    show(text) {
      if (stopped) return
      if (spinner) {
        spinner.text = text
        return
      }
      pending ??= import('ora').then(({default: ora}) => {
        if (stopped) return
        spinner = ora({text, stream: process.stderr, discardStdin: false})
        spinner.start()
      })
    },
    stop() {
      stopped = true
      spinner?.stop()
      spinner = null
    },
  }
}
