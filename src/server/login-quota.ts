/**
 * Logins lockd checks at once. A login not checked before costs a scrypt (~75 ms of one of
 * the thread pool's four threads): unbounded, a flood of guesses queued every other first login
 * behind it without end. Bounded overall and per peer address, so one address cannot take every
 * place. A login checked before, or being checked now, costs nothing more and is not counted
 * (PasswordCheck.needsScrypt).
 */
export class LoginQuota {
  private inFlight = 0
  private readonly byAddress = new Map<string, number>()

  constructor(
    private readonly overall = 64,
    private readonly perAddress = 8,
  ) {}

  /** A place for one check from `address`: the function that gives it back, or why there is none. */
  admit(address: string): {done: () => void} | {refused: string} {
    const fromAddress = this.byAddress.get(address) ?? 0
    if (fromAddress >= this.perAddress) return {refused: `lockd is checking ${fromAddress} logins from ${address} already; try again in a moment`}
    if (this.inFlight >= this.overall) return {refused: `lockd is checking ${this.inFlight} logins already; try again in a moment`}
    this.inFlight++
    this.byAddress.set(address, fromAddress + 1)
    let given = false
    return {
      done: () => {
        if (given) return
        given = true
        this.inFlight--
        const left = this.byAddress.get(address)! - 1
        if (left > 0) this.byAddress.set(address, left)
        else this.byAddress.delete(address)
      },
    }
  }
}
