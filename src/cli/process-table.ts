import {readdirSync, readFileSync} from 'node:fs'

// The machine's processes as Linux's /proc shows them: for hold's supervision of its command
// (child.ts) and its watchdog (watchdog-main.ts).

export interface ProcessEntry {
  pid: number
  ppid: number
  pgrp: number
  zombie: boolean
  /** Start time in clock ticks since boot: with the pid, names one process across pid reuse. */
  start: string
}

/** The pids of /proc (Linux); none elsewhere. */
function procPids(): number[] {
  try {
    return readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .map(Number)
  } catch {
    return []
  }
}

/** Every process on the machine (Linux /proc); empty elsewhere. */
export function listProcesses(): Map<number, ProcessEntry> {
  const processes = new Map<number, ProcessEntry>()
  for (const pid of procPids()) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      // The command name may contain spaces and parentheses: the fields follow the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      processes.set(pid, {pid, ppid: Number(fields[1]), pgrp: Number(fields[2]), zombie: fields[0] === 'Z', start: fields[19]})
    } catch {}
  }
  return processes
}

export function descendsFrom(processes: Map<number, ProcessEntry>, pid: number, ancestor: number): boolean {
  for (let at = processes.get(pid), hops = 0; at && hops < 64; at = processes.get(at.ppid), hops++) {
    if (at.ppid === ancestor) return true
  }
  return false
}

/**
 * Whether a process's environment holds `marker` as a whole entry (Linux /proc; never for
 * another user's process, whose environment cannot be read, nor a zombie's, which reads empty).
 */
export function carries(pid: number, marker: Buffer): boolean {
  let environ: Buffer
  try {
    environ = readFileSync(`/proc/${pid}/environ`)
  } catch {
    return false
  }
  for (let at = environ.indexOf(marker); at !== -1; at = environ.indexOf(marker, at + 1)) if (at === 0 || environ[at - 1] === 0) return true
  return false
}

export function groupExists(pgrp: number): boolean {
  try {
    process.kill(-pgrp, 0)
    return true
  } catch {
    return false
  }
}
