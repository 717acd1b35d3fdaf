import type * as Etcd3Module from 'etcd3'
import type {isBrokenCircuitError as IsBrokenCircuit} from 'cockatiel'
import {BadInputError, ErrorCode, LockError, NotPermittedError, ServerError, UnreachableError} from '../../errors.js'

/** etcd3's and cockatiel's error types, loaded with etcd3 (lazily: never on lockd's path). */
export interface EtcdErrorTypes {
  etcd3: typeof Etcd3Module
  isBrokenCircuitError: typeof IsBrokenCircuit
}

/**
 * Turn an error of the etcd3 client into lockctl's typed errors, by its type (etcd3 marks the
 * transient ones: network trouble, an unavailable member, a deadline), never by its message.
 */
export function mapEtcdError(types: EtcdErrorTypes, label: string, what: string, error: Error, withLogin = false): LockError {
  if (error instanceof LockError) return error
  const {etcd3} = types
  // gRPC messages carry a status prefix and resolver notes nobody needs to read.
  const detail = error.message
    .split('\n')[0]
    .replace(/^\d+ [A-Z_]+: /, '')
    .replace(/\.? ?Resolution note:.*$/, '')
  // A member answered, and refused for lack of resources: above all etcd's NOSPACE alarm (its
  // database over --quota-backend-bytes), which stops every write until an operator acts. It
  // is not that nobody answered; retrying still serves (it ends once the alarm is disarmed).
  // (etcd3 spells the class "Exhasted".)
  if (error instanceof etcd3.GRPCResourceExhastedError) {
    return new UnreachableError(
      `${label}: ${what}: etcd refused it for lack of resources (${detail}); if its database is full (NOSPACE alarm), an operator must compact, defragment and disarm it (etcdctl alarm disarm)`,
      {cause: error},
    )
  }
  if (etcd3.isRecoverableError(error) || types.isBrokenCircuitError(error) || error instanceof etcd3.ClientClosedError) {
    return new UnreachableError(`${label}: ${what}: no etcd member answered (${detail})`, {cause: error})
  }
  // Exit 6 as for lockd (docs/exit-codes.md): a wrong password or a missing role is not a typo
  // in a flag, and a script must be able to tell it from one.
  if (error instanceof etcd3.EtcdAuthenticationFailedError || error instanceof etcd3.EtcdInvalidAuthTokenError || error instanceof etcd3.GRPCUnauthenticatedError) {
    return new NotPermittedError(`${label}: ${what}: etcd refused the credentials (${detail})`, {cause: error})
  }
  // Of what lockctl calls, only the login of a --user can fail a precondition: the cluster has
  // no authentication enabled (etcdctl says the same). A flag to drop, not an outage.
  if (withLogin && error instanceof etcd3.GRPCFailedPreconditionError) {
    return new BadInputError(`${label}: ${what}: etcd did not take the login (${detail}); without authentication on the cluster, give no --user`)
  }
  if (error instanceof etcd3.EtcdPermissionDeniedError) {
    return new NotPermittedError(`${label}: ${what}: etcd does not permit this user that: a role with read-write on the lock's keys is needed (${detail})`, {cause: error})
  }
  return new ServerError(`${label}: ${what}: ${detail}`, {cause: error})
}

/**
 * No member answered, or one answered with an error of its own (a stream reset mid-call): asking
 * again, maybe of another member, may work. Refused credentials or permissions will not.
 */
export function isTransient(error: unknown): boolean {
  return error instanceof LockError && (error.code === ErrorCode.UNREACHABLE || error.code === ErrorCode.INTERNAL)
}

/** The lease named in a request no longer exists (expired or revoked). */
export function isLeaseGone(types: EtcdErrorTypes, error: unknown): boolean {
  const cause = error instanceof LockError ? error.cause : error
  return cause instanceof types.etcd3.EtcdLeaseInvalidError
}

/**
 * etcd refused the call's token because its users or roles changed since the login (etcd's
 * ErrAuthOldRevision). etcd3 has no type for it: it is told by etcd's error description, as
 * etcd's own Go client tells it (rpctypes), which is etcd's contract on the wire.
 */
export function isOldAuthRevision(error: unknown): boolean {
  return error instanceof Error && error.message.includes('etcdserver: revision of auth store is old')
}

/**
 * Make `client` log in again at its next call: etcd3 does that by itself only after "invalid
 * auth token", with a method it does not export (its connection pool's authenticator). False
 * when an etcd3 of another shape lacks it (the call then fails as before; a test covers it).
 */
export function forgetLogin(client: Etcd3Module.Etcd3): boolean {
  const authenticator = (client as unknown as {pool?: {authenticator?: {invalidateMetadata?: () => void}}}).pool?.authenticator
  if (typeof authenticator?.invalidateMetadata !== 'function') return false
  authenticator.invalidateMetadata()
  return true
}
