import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {ROOT, tempDir} from '../helpers/processes.js'

const daemons: number[] = []
afterAll(() => {
  for (const pid of daemons) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
})

describe('the published package', () => {
  it('npm pack, installed into an empty directory: `npx lockctl lock k` works there, starting its embedded lockd', {timeout: 180_000}, () => {
    const packDir = tempDir('lockctl-pack-')
    // --ignore-scripts: no rebuild of dist/ while other test files run the CLI from it (npm test built it).
    execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', packDir, '--silent'], {cwd: ROOT, stdio: 'pipe'})
    const tarball = join(
      packDir,
      readdirSync(packDir).find((name) => name.endsWith('.tgz'))!,
    )
    // The snapshot is built for the user's own Node by the package's postinstall, never shipped.
    const listing = execFileSync('tar', ['tzf', tarball], {encoding: 'utf8'})
    expect(listing).toContain('package/dist/snapshot/lockctl.cjs')
    expect(listing).not.toContain('lockctl.blob')
    const app = tempDir('lockctl-app-')
    writeFileSync(join(app, 'package.json'), JSON.stringify({name: 'app', version: '1.0.0', private: true}))
    // The dependencies come from npm's cache (npm ci filled it); the registry only if it must.
    execFileSync('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--silent'], {cwd: app, stdio: 'pipe'})
    const home = join(app, 'home')
    const env = {...process.env, HOME: home, XDG_STATE_HOME: join(home, 'state'), LOCKCTL_ENDPOINTS: undefined, XDG_CONFIG_HOME: join(home, 'config'), NODE_OPTIONS: undefined}
    const lock = spawnSync('npx', ['--no-install', 'lockctl', 'lock', 'k', '--json'], {cwd: app, env, encoding: 'utf8'})
    expect(lock.status, lock.stderr).toBe(0)
    expect(JSON.parse(lock.stdout)).toMatchObject({key: 'k', fence: expect.any(Number)})
    const status = spawnSync('npx', ['--no-install', 'lockctl', 'status', '--json'], {cwd: app, env, encoding: 'utf8'})
    expect(status.status, status.stderr).toBe(0)
    const document = JSON.parse(status.stdout) as {server: {pid: number}; locks: {key: string}[]}
    daemons.push(document.server.pid)
    expect(document.locks.map((l) => l.key)).toEqual(['k'])
    // Installed, it starts from the snapshot its postinstall built.
    expect(existsSync(join(app, 'node_modules', 'lockctl', 'dist', 'snapshot', 'lockctl.blob'))).toBe(true)
    const hold = spawnSync('npx', ['--no-install', 'lockctl', 'hold', 'h', '--quiet', '--', 'sh', '-c', 'tr "\\0" " " < /proc/$PPID/cmdline'], {cwd: app, env, encoding: 'utf8'})
    expect(hold.status, hold.stderr).toBe(0)
    expect(hold.stdout).toContain('--snapshot-blob')
  })
})
