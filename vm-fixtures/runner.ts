/**
 * Boots the test guest (vm-fixtures/build-guest.sh) under QEMU/TCG against a vhost-user-fs socket that the
 * caller's daemon (closurefs or the peer virtiofsd) already listens on (or, for comparison, against QEMU's own
 * 9p server), runs a shell script inside the guest with the share mounted at /nix/store (read-only unless
 * asked otherwise), and returns what the script printed and its exit status.
 *
 * The script travels as a second cpio archive appended to the base initramfs: the kernel unpacks
 * concatenated archives in order, so no second share, disk or network is needed, and the base initramfs
 * stays cached. The guest reports on the serial console between markers that /init prints:
 *   CFS-MOUNT ok|failed …, CFS-BEGIN, <script output>, CFS-EXIT <status>, CFS-KLOG-BEGIN … CFS-KLOG-END.
 *
 * QEMU always runs under coreutils `timeout` (QEMU does not exit by itself when its backend dies) and under
 * `flock` on one lock file, so parallel jest workers never boot two TCG guests at once on a 2-core machine.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export type GuestMachine = 'q35' | 'pc' | 'microvm';
/** Which Debian 6.1 kernel the guest boots; see build-guest.sh (only amd64 has 9p). */
export type GuestFlavour = 'cloud-amd64' | 'amd64';

export interface RunGuestOptions {
  /** vhost-user socket the daemon listens on (QEMU connects as the client). Required unless `virtfs` is set. */
  socketPath?: string;
  /**
   * Instead of a vhost-user-fs device, share this host directory with QEMU's built-in 9p server
   * (-virtfs local,security_model=none,readonly=on) and mount it with -t 9p. Needs flavour 'amd64'.
   */
  virtfs?: { path: string };
  /** virtio-fs (or 9p) tag; the guest mounts this tag at /nix/store. */
  tag: string;
  /**
   * Mount with the guest-side "ro" option (default true). false mounts read-write, so that every write the
   * guest tries reaches the daemon, whose own answer (EROFS) is then what the guest sees.
   */
  readOnlyMount?: boolean;
  /** Guest kernel flavour. Default 'cloud-amd64'. */
  flavour?: GuestFlavour;
  /** Shell script (busybox sh) run in the guest as /run.sh, cwd /, stdin /dev/null, stderr merged into stdout. */
  script: string;
  /** q35 (default) and pc use vhost-user-fs-pci; microvm uses vhost-user-fs-device on virtio-mmio. */
  machine?: GuestMachine;
  /** Guest RAM, all of it a shared memfd as vhost-user requires. Default 512. */
  memMiB?: number;
  /** Wall-clock limit for the guest run (QEMU is killed after it). Default 120 000. */
  timeoutMs?: number;
  /** Extra mount options (after "ro" unless readOnlyMount is false), comma-separated, no spaces (e.g. "dax=always"). */
  mountOptions?: string;
  /** Where the guest mounts the share. Default /nix/store. */
  mountPoint?: string;
  /** QEMU binary. Default qemu-system-x86_64 from PATH (or $CFS_QEMU). */
  qemuBinary?: string;
  /** Appended to the QEMU command line as they are. */
  extraQemuArgs?: string[];
  /** Extra properties on the vhost-user-fs device, e.g. { 'num-request-queues': '2', 'queue-size': '256' }. */
  deviceProps?: Record<string, string>;
  /** Extra kernel command line words. */
  extraKernelArgs?: string[];
  /** Extra files placed into the guest's root filesystem (path relative to /, parents created). */
  files?: Record<string, string | Buffer>;
  /** Called with each chunk of serial output as it arrives (for debugging a hanging guest). */
  onConsole?: (chunk: string) => void;
}

export interface GuestResult {
  /** The script's exit status, or null when the guest never reported one (crash, hang, timeout). */
  exitStatus: number | null;
  /** Exactly what the script printed, between the CFS-BEGIN and CFS-EXIT markers ("\n" line ends). */
  output: string;
  /** The whole serial console ("\n" line ends), for diagnostics. */
  console: string;
  /** Wall time of the QEMU run (excluding time spent waiting for another guest to finish). */
  durationMs: number;
  /** Whether /init managed to mount the share. */
  mounted: boolean;
  /** Kernel warnings/errors (levels 0-4) logged while the guest ran. */
  kernelLog: string;
  /** True when the guest was killed for exceeding timeoutMs. */
  timedOut: boolean;
  /**
   * True when QEMU reported that the vhost-user backend went away before the guest finished; the guest is
   * then stopped a few seconds later instead of hanging on its pending FUSE requests until timeoutMs.
   */
  backendLost: boolean;
  /** QEMU's stderr (warnings, vhost-user errors). */
  qemuStderr: string;
  /** The full command that was run, for reproducing a failure by hand. */
  command: string[];
}

export interface GuestAssets {
  kernel: string;
  initrd: string;
  kernelVersion: string;
  dir: string;
  flavour: GuestFlavour;
  /** File systems the guest can mount: always "virtiofs", "9p" when the kernel has it. */
  features: string[];
}

const assetsCache = new Map<GuestFlavour, GuestAssets>();

/** The build-guest.sh next to this file, whether running from vm-fixtures/ (ts-jest) or dist/vm-fixtures/. */
function buildGuestScript(): string {
  const candidates = [
    path.join(__dirname, 'build-guest.sh'),
    path.join(__dirname, '..', '..', 'vm-fixtures', 'build-guest.sh'),
  ];
  const found = candidates.find((p) => fs.existsSync(p));
  if (found === undefined) throw new Error(`build-guest.sh not found (looked at ${candidates.join(', ')})`);
  return found;
}

/**
 * Ensures the guest kernel and base initramfs exist (build-guest.sh is idempotent and cached; the first
 * call downloads two .deb files) and returns their paths.
 */
export function guestAssets(flavour: GuestFlavour = 'cloud-amd64'): GuestAssets {
  const cached = assetsCache.get(flavour);
  if (cached !== undefined) return cached;
  const script = buildGuestScript();
  const r = spawnSync('bash', [script], {
    encoding: 'utf8',
    maxBuffer: 16 * 1024 * 1024,
    env: { ...process.env, CFS_GUEST_FLAVOUR: flavour },
  });
  if (r.error !== undefined) throw new Error(`cannot run ${script}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${script} failed (status ${String(r.status)}):\n${r.stderr}${r.stdout}`);
  const dir = r.stdout.trim().split('\n').pop() ?? '';
  // An unpacked ELF kernel (PVH entry) boots seconds faster under TCG than an xz bzImage; see build-guest.sh.
  const kernel = fs.existsSync(path.join(dir, 'vmlinux')) ? path.join(dir, 'vmlinux') : path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.gz');
  if (!fs.existsSync(kernel) || !fs.existsSync(initrd)) {
    throw new Error(`${script} printed ${JSON.stringify(dir)}, which has no vmlinuz/initrd.gz`);
  }
  const kernelVersion = fs.readFileSync(path.join(dir, 'kernel-version'), 'utf8').trim();
  const features = fs.readFileSync(path.join(dir, 'features'), 'utf8').trim().split(/\s+/);
  const assets: GuestAssets = { kernel, initrd, kernelVersion, dir, flavour, features };
  assetsCache.set(flavour, assets);
  return assets;
}

// ---- cpio (newc) encoding of the per-run overlay -------------------------------------------------------

interface CpioEntry {
  name: string;
  mode: number;
  data: Buffer;
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** One newc archive: "070701" + 13 8-digit hex fields, NUL-terminated name, data; both padded to 4 bytes. */
export function encodeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (e: CpioEntry): void => {
    const name = Buffer.from(`${e.name}\0`, 'utf8');
    const fields = [
      ino++, e.mode, 0, 0, 1, 1 /* mtime: like a store file */, e.data.length, 0, 0, 0, 0, name.length, 0,
    ];
    const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
    parts.push(header, name, Buffer.alloc(pad4(header.length + name.length)), e.data, Buffer.alloc(pad4(e.data.length)));
  };
  for (const e of entries) push(e);
  push({ name: 'TRAILER!!!', mode: 0, data: Buffer.alloc(0) });
  return Buffer.concat(parts);
}

function overlayEntries(script: string, files: Record<string, string | Buffer>): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const add = (rel: string, data: Buffer, mode: number): void => {
    const clean = path.posix.normalize(rel.replace(/^\/+/, ''));
    if (clean === '' || clean === '.' || clean.startsWith('..')) throw new Error(`bad guest file path ${JSON.stringify(rel)}`);
    const parts = clean.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ name: d, mode: 0o040755, data: Buffer.alloc(0) });
      }
    }
    entries.push({ name: clean, mode, data });
  };
  add('run.sh', Buffer.from(script, 'utf8'), 0o100755);
  for (const [rel, content] of Object.entries(files)) {
    add(rel, typeof content === 'string' ? Buffer.from(content, 'utf8') : content, 0o100644);
  }
  return entries;
}

// ---- QEMU command line ---------------------------------------------------------------------------------

/** Host TSC rate in kHz: the microvm guest needs tsc_early_khz (it has no PIT/HPET to calibrate against). */
export function hostTscKhz(): number | undefined {
  let info: string;
  try {
    info = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return undefined;
  }
  const mhz = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(info);
  if (mhz?.[1] !== undefined) return Math.round(Number(mhz[1]) * 1000);
  const ghz = /^model name\s*:.*@\s*([0-9.]+)GHz/m.exec(info);
  if (ghz?.[1] !== undefined) return Math.round(Number(ghz[1]) * 1e6);
  return undefined;
}

function kernelArgWord(name: string, value: string): string {
  if (/\s/.test(value) || value === '') throw new Error(`${name} must be non-empty and contain no whitespace: ${JSON.stringify(value)}`);
  return value;
}

export function qemuArgs(opts: RunGuestOptions, assets: { kernel: string; initrd: string }): string[] {
  const machine = opts.machine ?? 'q35';
  const mem = opts.memMiB ?? 512;
  if (!Number.isInteger(mem) || mem < 64) throw new Error(`memMiB must be an integer ≥ 64, got ${mem}`);
  const tag = kernelArgWord('tag', opts.tag);
  const append = ['console=ttyS0', 'panic=-1', 'quiet', `cfs.tag=${tag}`];
  if (opts.mountOptions !== undefined && opts.mountOptions !== '') {
    append.push(`cfs.mountopts=${kernelArgWord('mountOptions', opts.mountOptions)}`);
  }
  if (opts.mountPoint !== undefined) append.push(`cfs.mountpoint=${kernelArgWord('mountPoint', opts.mountPoint)}`);
  if (opts.readOnlyMount === false) append.push('cfs.rw=1');
  if (opts.virtfs !== undefined) append.push('cfs.fstype=9p');

  const props = Object.entries(opts.deviceProps ?? {}).map(([k, v]) => `,${k}=${v}`).join('');
  // The same shared memfd RAM for 9p too, so a comparison differs only in the file system transport.
  const args = ['-accel', 'tcg', '-m', `${mem}M`, '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`];
  let share: string[];
  if (opts.virtfs !== undefined) {
    if (opts.virtfs.path.includes(',')) throw new Error(`virtfs path must not contain ',': ${opts.virtfs.path}`);
    // -virtfs picks the virtio-9p transport that fits the machine (pci, or device on virtio-mmio).
    share = ['-virtfs', `local,path=${opts.virtfs.path},mount_tag=${tag},security_model=none,readonly=on`];
  } else {
    if (opts.socketPath === undefined) throw new Error('runGuest needs socketPath (or virtfs)');
    const device = machine === 'microvm' ? 'vhost-user-fs-device' : 'vhost-user-fs-pci';
    share = [
      '-chardev', `socket,id=cfs0,path=${opts.socketPath}`,
      '-device', `${device},chardev=cfs0,tag=${tag}${props}`,
    ];
  }
  if (machine === 'microvm') {
    const khz = hostTscKhz();
    if (khz !== undefined) append.push(`tsc_early_khz=${khz}`);
    args.push('-machine', 'microvm,memory-backend=mem', '-global', 'virtio-mmio.force-legacy=false', ...share);
  } else {
    args.push('-machine', machine, '-numa', 'node,memdev=mem', ...share);
  }
  append.push(...(opts.extraKernelArgs ?? []));
  args.push(
    '-kernel', assets.kernel,
    '-initrd', assets.initrd,
    '-append', append.join(' '),
    // No default devices (NIC option ROMs, VGA) to keep the TCG boot short; the serial port is the console.
    '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-serial', 'stdio',
    '-no-reboot',
    ...(opts.extraQemuArgs ?? []),
  );
  return args;
}

// ---- console parsing -----------------------------------------------------------------------------------

export interface ParsedConsole {
  exitStatus: number | null;
  output: string;
  mounted: boolean;
  kernelLog: string;
}

/** Extracts the markers /init prints. CFS-EXIT may follow script output that did not end with a newline. */
export function parseConsole(text: string): ParsedConsole {
  const begin = /^CFS-BEGIN\n/m.exec(text);
  const mounted = /^CFS-MOUNT ok$/m.test(text);
  if (begin === null) return { exitStatus: null, output: '', mounted, kernelLog: '' };
  const start = begin.index + begin[0].length;
  const klog = text.indexOf('\nCFS-KLOG-BEGIN\n', start);
  const searchEnd = klog >= 0 ? klog + 1 : text.length;
  // The last CFS-EXIT before the kernel-log section is the real one, whatever the script printed.
  const exitRe = /CFS-EXIT (\d+)\n/g;
  let last: RegExpExecArray | null = null;
  exitRe.lastIndex = start;
  for (let m = exitRe.exec(text); m !== null && m.index < searchEnd; m = exitRe.exec(text)) last = m;
  if (last === null || last[1] === undefined) {
    return { exitStatus: null, output: text.slice(start), mounted, kernelLog: '' };
  }
  let kernelLog = '';
  if (klog >= 0) {
    const kstart = klog + '\nCFS-KLOG-BEGIN\n'.length;
    const kend = text.indexOf('CFS-KLOG-END', kstart);
    kernelLog = text.slice(kstart, kend >= 0 ? kend : text.length);
  }
  return { exitStatus: Number(last[1]), output: text.slice(start, last.index), mounted, kernelLog };
}

// ---- running -------------------------------------------------------------------------------------------

function lockFile(): string {
  const dir = process.env.CLOSUREFS_CACHE ?? path.join(os.homedir(), '.cache', 'closurefs');
  fs.mkdirSync(dir, { recursive: true });
  return path.join(dir, 'qemu.lock');
}

const START_MARK = 'CFS-RUNNER-QEMU-START\n';

/** Boots one guest, runs opts.script in it, and resolves when QEMU has exited (it never rejects on guest failure). */
export async function runGuest(opts: RunGuestOptions): Promise<GuestResult> {
  const assets = guestAssets(opts.flavour);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  if (opts.virtfs !== undefined) {
    if (!assets.features.includes('9p')) {
      throw new Error(`the ${assets.flavour} guest kernel has no 9p (features: ${assets.features.join(' ')}); use flavour 'amd64'`);
    }
    if (!fs.statSync(opts.virtfs.path).isDirectory()) throw new Error(`virtfs path ${opts.virtfs.path} is not a directory`);
  } else if (opts.socketPath === undefined || !fs.existsSync(opts.socketPath)) {
    throw new Error(`vhost-user socket ${String(opts.socketPath)} does not exist (start the daemon first)`);
  }

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-guest-'));
  try {
    // The kernel only recognises a following uncompressed cpio archive at a 4-byte aligned offset.
    const base = fs.readFileSync(assets.initrd);
    const initrd = path.join(tmp, 'initrd');
    fs.writeFileSync(initrd, Buffer.concat([base, Buffer.alloc(pad4(base.length)), encodeCpio(overlayEntries(opts.script, opts.files ?? {}))]));

    const qemu = opts.qemuBinary ?? process.env.CFS_QEMU ?? 'qemu-system-x86_64';
    const qargs = qemuArgs(opts, { kernel: assets.kernel, initrd });
    const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
    // flock → sh (marks the moment the lock is held) → timeout → QEMU. timeout sends TERM, then KILL 5 s
    // later. --foreground keeps QEMU in our process group, so killGroup() reaches every process of the chain.
    const timeoutCmd = ['timeout', '--foreground', '-k', '5', String(secs), qemu, ...qargs];
    const command = [
      'flock', lockFile(),
      'sh', '-c', `printf '${START_MARK.trim()}\\n' >&2; exec "$@"`, 'sh',
      ...timeoutCmd,
    ];
    return await new Promise<GuestResult>((resolve, reject) => {
      // Own process group: one kill reaches flock, timeout and QEMU; if this process dies, `timeout` still
      // ends QEMU on its own.
      const child = spawn(command[0] as string, command.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
      const killGroup = (): void => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGTERM');
        } catch {
          // Already gone.
        }
      };
      let consoleText = '';
      let stderr = '';
      let started: number | undefined;
      let timedOut = false;
      let finished = false;
      let deadline: NodeJS.Timeout | undefined;
      let afterExit: NodeJS.Timeout | undefined;
      let backendLost = false;
      let lostTimer: NodeJS.Timeout | undefined;

      const armDeadline = (): void => {
        // Backstop in case `timeout` itself misbehaves: a little after its own limit, TERM the chain.
        deadline = setTimeout(() => {
          timedOut = true;
          killGroup();
        }, timeoutMs + 8_000);
      };

      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk: string) => {
        consoleText += chunk;
        opts.onConsole?.(chunk);
        // After the guest has reported, give QEMU a few seconds to power off, then stop it ourselves.
        if (afterExit === undefined && consoleText.includes('CFS-KLOG-END')) {
          afterExit = setTimeout(killGroup, 10_000);
        }
      });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        stderr += chunk;
        if (started === undefined && stderr.includes(START_MARK)) {
          started = Date.now();
          stderr = stderr.replace(START_MARK, '');
          armDeadline();
        }
        // QEMU 7.2's wording when the backend's socket hits EOF (or a read fails); without a backend the
        // guest's requests never complete, so waiting for the full timeout would only slow a failing test.
        if (!backendLost && /Unexpected end-of-file before all data were read|Failed to read msg header/.test(stderr)
            && !consoleText.includes('CFS-KLOG-END')) {
          backendLost = true;
          lostTimer = setTimeout(killGroup, 3_000);
        }
      });
      child.on('error', (err) => {
        finished = true;
        if (deadline !== undefined) clearTimeout(deadline);
        reject(new Error(`cannot start ${command[0] as string}: ${err.message}`));
      });
      child.on('close', (code, signal) => {
        if (finished) return;
        finished = true;
        if (deadline !== undefined) clearTimeout(deadline);
        if (afterExit !== undefined) clearTimeout(afterExit);
        if (lostTimer !== undefined) clearTimeout(lostTimer);
        // coreutils timeout exits 124 when it had to stop QEMU.
        if (code === 124 || code === 137) timedOut = true;
        const text = consoleText.replace(/\r\n/g, '\n').replace(/\r/g, '');
        const parsed = parseConsole(text);
        const durationMs = started === undefined ? 0 : Date.now() - started;
        if (started === undefined && parsed.exitStatus === null) {
          stderr += `\n(runner: QEMU never started; flock/sh exited with ${String(code ?? signal)})`;
        }
        resolve({
          exitStatus: parsed.exitStatus,
          output: parsed.output,
          console: text,
          durationMs,
          mounted: parsed.mounted,
          kernelLog: parsed.kernelLog,
          timedOut,
          backendLost,
          qemuStderr: stderr,
          command: timeoutCmd,
        });
      });
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** A one-paragraph description of a failed guest run, for test failure messages. */
export function describeRun(r: GuestResult): string {
  const tail = r.console.split('\n').slice(-40).join('\n');
  return [
    `exitStatus=${String(r.exitStatus)} mounted=${String(r.mounted)} timedOut=${String(r.timedOut)} ` +
      `backendLost=${String(r.backendLost)} durationMs=${r.durationMs}`,
    `command: ${r.command.join(' ')}`,
    r.qemuStderr.trim() === '' ? '' : `qemu stderr:\n${r.qemuStderr.trim()}`,
    r.kernelLog.trim() === '' ? '' : `kernel log:\n${r.kernelLog.trim()}`,
    `console tail:\n${tail}`,
  ].filter((s) => s !== '').join('\n');
}
