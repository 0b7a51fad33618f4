/**
 * Structured logs (pino) on stderr: JSON by default, readable lines when stderr is
 * a terminal. stdout stays free for --print-capabilities.
 */
import pino from 'pino';

export type Logger = pino.Logger;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(level: LogLevel = 'info', pretty = process.stderr.isTTY === true): Logger {
  const options: pino.LoggerOptions = { name: 'closurefs', level, base: { pid: process.pid } };
  if (pretty) {
    // Loaded only on a terminal: a daemon under systemd/microvm.nix logs JSON.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pinoPretty = require('pino-pretty') as (o: object) => NodeJS.WritableStream;
    return pino(options, pinoPretty({ destination: 2, sync: true, colorize: true }));
  }
  return pino(options, pino.destination({ dest: 2, sync: true }));
}
