/**
 * Linux errno values as they travel in fuse_out_header.error (negated). Spelled
 * out rather than taken from os.constants: these are wire values the guest
 * kernel interprets, not properties of whatever host runs the daemon.
 */
import { ClosurefsError, isErrnoError } from '../errors';

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  EXDEV: 18,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EPROTO: 71,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ESTALE: 116,
} as const;

const BY_NAME: Record<string, number> = Errno;

/**
 * A file system operation failed with an errno for the guest. Thrown by
 * FileSystem implementations; the FUSE server turns it into an error reply.
 *
 * This and FuseDecodeError are answers to the guest (a name that is not there,
 * a write to a read-only store), not bugs: thrown on hot paths, and nobody reads
 * their stack. V8 captures one per Error at about 10 µs when optimised frames
 * are on the stack, more than the request itself, so they are made without one
 * (Error.stackTraceLimit is 0 while the Error constructor runs).
 */
export class FsError extends ClosurefsError {
  override readonly code = 'CFS_ERR_FS';
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message ?? `errno ${errno}`);
    Error.stackTraceLimit = limit;
  }
}

/** A request could not be decoded: too short, bad length, bad name. Carries the errno to reply with. */
export class FuseDecodeError extends ClosurefsError {
  override readonly code = 'CFS_ERR_FUSE_DECODE';
  constructor(
    message: string,
    readonly errno: number = Errno.EINVAL,
  ) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
  }
}

/** The reply does not fit in the device-writable buffers of the chain. */
export class FuseReplyOverflowError extends ClosurefsError {
  override readonly code = 'CFS_ERR_FUSE_REPLY_OVERFLOW';
  readonly errno = Errno.ERANGE;
}

/** An internal invariant broke (a bug, not bad input). */
export class InternalInvariantError extends ClosurefsError {
  override readonly code = 'CFS_ERR_INTERNAL';
}

/**
 * The errno to send for an exception, or undefined when it is not an errno-carrying
 * error (a bug: the caller logs it and answers EIO). Host syscall errors from the
 * addon carry positive errno values, Node's own fs errors negative ones.
 */
export function errnoOf(e: unknown): number | undefined {
  if (e instanceof FsError || e instanceof FuseDecodeError || e instanceof FuseReplyOverflowError) return e.errno;
  if (isErrnoError(e)) {
    const byName = BY_NAME[e.code];
    if (byName !== undefined) return byName;
    const n = Math.abs(e.errno);
    return n > 0 && n < 4096 ? n : undefined;
  }
  return undefined;
}

export function fsError(errno: number, message?: string): FsError {
  return new FsError(errno, message);
}
