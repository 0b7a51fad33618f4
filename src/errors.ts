/**
 * Error classes of closurefs. Every error has a stable `code` string (CFS_ERR_*)
 * that is never renamed or reused; protocol errors also carry their wire value.
 */
export class ClosurefsError extends Error {
  readonly code: string = 'CFS_ERR';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A system call failed. Mirrors Node's own syscall errors (code, errno, syscall). */
export interface ErrnoError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** Duck-typed on purpose: errors thrown by the addon may come from another realm (jest, vm). */
export function isErrnoError(e: unknown, code?: string): e is ErrnoError {
  if (typeof e !== 'object' || e === null) return false;
  const c = (e as Partial<ErrnoError>).code;
  return typeof c === 'string' && typeof (e as Partial<ErrnoError>).errno === 'number' && (code === undefined || c === code);
}
