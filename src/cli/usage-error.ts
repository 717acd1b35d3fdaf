import {BadInputError} from '../client/errors.js'

/**
 * A usage error whose text is one line naming the flag and the accepted form. oclif rewrites
 * the message of errors thrown while parsing, so the line is kept apart in `oneLine`. Free of
 * oclif, so that pure helpers (tokenize, session, profiles) can throw it without loading it.
 */
export class UsageError extends BadInputError {
  readonly oneLine: string
  constructor(message: string) {
    super(message)
    this.oneLine = message
  }
}
