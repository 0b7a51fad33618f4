/**
 * The e2e tests' daemon helper: starts closurefs (or, with CFS_E2E_DAEMON=virtiofsd, the peer virtiofsd) for
 * one guest boot, and makes sure no daemon outlives the test file (afterAll kills whatever is still running).
 *
 * The switch exists to prove the e2e checks assert something: the peer shares the whole store directory and
 * passes host metadata through, so against it the closure and leak checks must fail.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  parseLogs,
  startDaemon,
  type DaemonExit,
  type DaemonKind,
  type LogLine,
  type RunningDaemon,
  type StartDaemonOptions,
} from '../../vm-fixtures/daemons';

export type { DaemonKind, RunningDaemon };

export function daemonKindFromEnv(): DaemonKind {
  const v = process.env.CFS_E2E_DAEMON ?? 'closurefs';
  if (v !== 'closurefs' && v !== 'virtiofsd') throw new Error(`CFS_E2E_DAEMON must be closurefs or virtiofsd, got '${v}'`);
  return v;
}

export interface DaemonRun {
  daemon: RunningDaemon;
  /** How the daemon ended after the guest went away (it should exit by itself, with status 0). */
  exit: DaemonExit | undefined;
  /** Whether it had to be killed because it did not exit within the grace period. */
  killed: boolean;
  /** closurefs' JSON log lines, and any stderr line that was not one. */
  logs: LogLine[];
  nonJson: string[];
  /** Log lines at error level or worse (pino: error 50, fatal 60). */
  errors: LogLine[];
}

/**
 * Registers afterAll cleanup and returns start/finish functions bound to one temp socket directory.
 * finish() waits for the daemon to exit on its own (closurefs without --persist exits when its frontend
 * disconnects), kills it only if it does not, and parses its logs.
 */
export function useDaemons(): {
  start: (o: Omit<StartDaemonOptions, 'socketDir'>) => Promise<RunningDaemon>;
  finish: (d: RunningDaemon, graceMs?: number) => Promise<DaemonRun>;
} {
  const live = new Set<RunningDaemon>();
  let dir: string | undefined;
  afterAll(async () => {
    await Promise.all([...live].map((d) => d.stop()));
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    start: async (o) => {
      dir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-e2e-sock-'));
      const d = await startDaemon({ ...o, socketDir: dir });
      live.add(d);
      return d;
    },
    finish: async (d, graceMs = 10_000) => {
      let exit = await d.waitExit(graceMs);
      let killed = false;
      if (exit === undefined) {
        killed = true;
        exit = await d.stop();
      }
      live.delete(d);
      fs.rmSync(d.socket, { force: true });
      const { lines, other } = d.kind === 'closurefs' ? parseLogs(d.output()) : { lines: [], other: [] };
      return { daemon: d, exit: killed ? undefined : exit, killed, logs: lines, nonJson: other, errors: lines.filter((l) => l.level >= 50) };
    },
  };
}
