/**
 * The logging surface closurefs' transport needs: pino's method shape, so a
 * pino logger fits as is and tests can pass a recorder.
 */
export interface LogFn {
  (obj: object, msg?: string): void;
  (msg: string): void;
}

export interface Logger {
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  debug: LogFn;
}

/** A logger that drops everything (default when none is given). */
export const silentLogger: Logger = { info: () => {}, warn: () => {}, error: () => {}, debug: () => {} };
