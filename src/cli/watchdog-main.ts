import {carries, groupExists, listProcesses} from './process-table.js'
import {silentHoldDue} from './watchdog.js'

/**
 * The watchdog's program (started by watchdog.ts: `node watchdog-main.js SIGNAL GRACE_MS GROUP LEASE_MS`,
 * the grant's token in LOCKCTL_WATCHDOG_TOKEN, hold's beats on stdin). It acts when hold has ended without standing it
 * down (the pipe closed: SIGKILL, the OOM killer), or has been silent for STALE_MS while the
 * grant it last reported nears its end (stopped: SIGSTOP, a debugger). A hold that beats is
 * alive and handles its own losses: the watchdog never acts beside it.
 */

/** How often the watchdog looks at the time, and at what is left while it stops things. */
const TICK_MS = 50

function watch(args: string[]): void {
  const [killSignal, graceText, groupText, leaseText] = args as [NodeJS.Signals, string, string, string]
  const graceMs = Number(graceText)
  const leaseMs = Number(leaseText)
  const group = Number(groupText)
  /** Only processes younger than hold carry its grant: older ones' environments are never read (one stuck in I/O can hang the read). */
  const holdStart = Number(listProcesses().get(process.ppid)?.start ?? 0)
  const token = process.env.LOCKCTL_WATCHDOG_TOKEN
  const marker = token ? Buffer.from(`LOCKCTL_TOKEN=${token}\0`) : null
  let lastBeat = performance.now()
  // Until the first beat arrives: at most half the lease from now (the grant is fresh, and hold
  // renews at half). A hold stopped at once may never have flushed a beat to the pipe.
  let grantEnd = lastBeat + leaseMs / 2
  let acting = false

  function targets(): number[] {
    if (!marker) return []
    const found: number[] = []
    for (const p of listProcesses().values()) {
      if (!p.zombie && p.pid !== process.pid && Number(p.start) >= holdStart && carries(p.pid, marker)) found.push(p.pid)
    }
    return found
  }

  function signalAll(signal: NodeJS.Signals): void {
    if (group > 0) {
      try {
        process.kill(-group, signal)
      } catch {}
    }
    for (const pid of targets()) {
      try {
        process.kill(pid, signal)
      } catch {}
    }
  }

  const anyLeft = () => (group > 0 && groupExists(group)) || targets().length > 0

  async function act(): Promise<never> {
    acting = true
    signalAll(killSignal)
    const killAt = performance.now() + graceMs
    let killed = false
    // Bounded: a process SIGKILL cannot end (uninterruptible I/O) is not waited for forever.
    for (let round = 0; round < 1200 && anyLeft(); round++) {
      if (!killed && performance.now() >= killAt) {
        signalAll('SIGKILL')
        killed = true
      }
      await new Promise((resolve) => setTimeout(resolve, TICK_MS))
    }
    process.exit(0)
  }

  let pending = ''
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk: string) => {
    pending += chunk
    for (let end = pending.indexOf('\n'); end !== -1; end = pending.indexOf('\n')) {
      const [word, value = ''] = pending.slice(0, end).split(' ')
      pending = pending.slice(end + 1)
      if (word === 'until') {
        lastBeat = performance.now()
        grantEnd = lastBeat + Number(value)
      } else if (word === 'done') process.exit(0)
    }
  })
  process.stdin.on('end', () => {
    if (!acting) void act()
  })
  process.stdin.on('error', () => {
    if (!acting) void act()
  })
  setInterval(() => {
    const now = performance.now()
    if (!acting && silentHoldDue({now, lastBeat, grantEnd, leaseMs})) void act()
  }, TICK_MS)
}

watch(process.argv.slice(2))
