/** lockd could not start; the message says why in one line. Exit code 1 from the CLI. */
export class ServerStartError extends Error {
  readonly exitCode = 1
}

/** A listener or the data directory is already owned by another lockd. */
export class AlreadyRunningError extends ServerStartError {}
