/**
 * A spinner on stderr while waiting, only when stderr is a terminal that says how wide it is and
 * output is not JSON. ora is imported only when a spinner is really shown (it costs start-up time
 * otherwise).
 *
 * A terminal of width 0 (a pseudo-terminal nobody sized: `script`, some `docker exec -t` and CI
 * runners) gets none: ora divides each line's width by the terminal's to know how many lines to
 * clear, and clears forever (a spinning CPU, and a `--wait` that never gives up).
 */
export interface Progress {
  show(text: string): void
  stop(): void
}

export function createProgress(enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY || !(process.stderr.columns > 0)) return {show() {}, stop() {}}
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
