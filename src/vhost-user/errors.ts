/**
 * Errors of the vhost-user layer. A protocol error breaks the stream (the
 * connection is closed); a request error is answered with a failure ack and the
 * connection goes on; a backend-channel error fails one backend request.
 */
import { ClosurefsError } from '../errors';

/** The byte stream or fds violate the framing rules: the connection cannot continue. */
export class VhostUserProtocolError extends ClosurefsError {
  override readonly code = 'CFS_ERR_VHOST_USER_PROTOCOL';
}

/**
 * A well-framed request the session refuses (bad value, wrong state,
 * unsupported). `ack` is the nonzero u64 sent back when a reply is expected:
 * an errno value, so logs on both sides say the same thing.
 */
export class VhostUserRequestError extends ClosurefsError {
  override readonly code = 'CFS_ERR_VHOST_USER_REQUEST';
  constructor(message: string, readonly ack: number = EINVAL, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A request on the backend channel (SET_BACKEND_REQ_FD) failed or timed out. */
export class BackendChannelError extends ClosurefsError {
  override readonly code = 'CFS_ERR_BACKEND_CHANNEL';
}

export const EINVAL = 22;
export const ENOSPC = 28;
export const ENOENT = 2;
export const ENOTSUP = 95;
