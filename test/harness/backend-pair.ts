/**
 * An in-process vhost-user backend for tests: a VhostUserSession on one end of
 * a socketpair, the test Frontend on the other, an echo device, and a logger
 * that records every line so tests can assert the documented log reaction.
 */
import * as native from '../../src/native';
import type { RequestHandler, ScatterGather } from '../../src/io';
import { VhostUserSession, type VhostUserDevice } from '../../src/vhost-user';
import type { Logger } from '../../src/virtio/logger';
import { Frontend, type FrontendOptions } from './frontend';

export interface LogLine {
  level: 'info' | 'warn' | 'error' | 'debug';
  msg: string;
  obj: Record<string, unknown>;
}

/** A pino-shaped logger that keeps lines in memory. */
export class RecordingLogger implements Logger {
  readonly lines: LogLine[] = [];
  info = this.#at('info');
  warn = this.#at('warn');
  error = this.#at('error');
  debug = this.#at('debug');

  #at(level: LogLine['level']) {
    return (objOrMsg: object | string, msg?: string): void => {
      if (typeof objOrMsg === 'string') this.lines.push({ level, msg: objOrMsg, obj: {} });
      else this.lines.push({ level, msg: msg ?? '', obj: objOrMsg as Record<string, unknown> });
    };
  }

  /** Lines at `level` whose message or fields mention `text`. */
  find(level: LogLine['level'], text: string | RegExp): LogLine[] {
    const match = (s: string): boolean => (typeof text === 'string' ? s.includes(text) : text.test(s));
    return this.lines.filter((l) => l.level === level && (match(l.msg) || match(JSON.stringify(l.obj))));
  }
}

/** Copies the request bytes into the reply buffers: the smallest device that proves a round trip. */
export class EchoHandler implements RequestHandler {
  readonly served: number[] = [];

  handle(queueIndex: number, sg: ScatterGather): number {
    this.served.push(queueIndex);
    const src = Buffer.concat(sg.readable as Buffer[]);
    let done = 0;
    for (const w of sg.writable) {
      if (done >= src.length) break;
      done += src.copy(w, 0, done);
    }
    return done;
  }
}

export interface Pair {
  fe: Frontend;
  session: VhostUserSession;
  log: RecordingLogger;
  handler: EchoHandler;
  /** Resolves with the session's close reason when it closes. */
  sessionClosed: Promise<Error | undefined>;
  close(): void;
}

export function backendPair(opts: FrontendOptions = {}, device: Partial<VhostUserDevice> = {}): Promise<Pair> {
  const [a, b] = native.socketpair();
  const log = new RecordingLogger();
  const handler = new EchoHandler();
  const session = new VhostUserSession(a, { numQueues: 2, handler, ...device }, { logger: log, backendTimeoutMs: 200 });
  const sessionClosed = new Promise<Error | undefined>((r) => session.once('close', r));
  return Frontend.connect({ fd: b }, opts).then((fe) => ({
    fe,
    session,
    log,
    handler,
    sessionClosed,
    close: () => {
      fe.close();
      session.close();
    },
  }));
}
