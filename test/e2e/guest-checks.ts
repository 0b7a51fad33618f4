/**
 * The guest side of the closurefs e2e test: one shell script per boot that gathers everything the assertions
 * need (listings, metadata, statfs, and a table of single checks with their exit status and output), and the
 * host side that produces the same listings from the host store with the same busybox commands.
 *
 * Output format on the console: sections start with a line "==CFS== <name>"; in the "checks" section every
 * check is one line "R|<label>|<status>|<output with newlines turned into tabs>".
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { hostPath, type NixFixture } from '../fixtures/nix/store';

/**
 * Lists a set of store paths relative to DIR, run by the same busybox commands in the guest and on the host,
 * so that the two outputs must be byte-identical. NUL-separated sorting keeps the file whose name contains a
 * newline in one piece until it is printed (it is then printed the same way on both sides).
 */
export const LISTING_SH = `# usage: sh listing.sh DIR NAME...
cd "$1" || exit 1
shift
echo "## entries (type|mode|name)"
find "$@" -print0 | sort -z | xargs -0 -r stat -c '%F|%a|%n'
echo "## sizes"
find "$@" -type f -print0 | sort -z | xargs -0 -r stat -c '%s|%n'
echo "## sha256"
find "$@" -type f -print0 | sort -z | xargs -0 -r sha256sum
echo "## symlinks"
find "$@" -type l -print0 | sort -z | xargs -0 -r sh -c 'for f; do printf "%s -> %s\\n" "$f" "$(readlink "$f")"; done' sh
`;

/** Per-entry metadata that must NOT be the host's: link count, inode number, change time (and mtime). */
export const META_SH = `# usage: sh meta.sh DIR NAME...
cd "$1" || exit 1
shift
find "$@" -print0 | sort -z | xargs -0 -r stat -c '%h|%i|%Y|%Z|%F|%n'
`;

export interface Meta {
  nlink: number;
  ino: number;
  mtime: number;
  ctime: number;
  type: string;
}

/** Parses META_SH output; a line that does not start with the numeric fields continues the previous name. */
export function parseMeta(text: string): Map<string, Meta> {
  const out = new Map<string, Meta>();
  let last: string | undefined;
  for (const line of text.split('\n')) {
    const m = /^(\d+)\|(\d+)\|(\d+)\|(\d+)\|([a-z ]+)\|(.*)$/.exec(line);
    if (m !== null) {
      last = m[6] as string;
      out.set(last, { nlink: Number(m[1]), ino: Number(m[2]), mtime: Number(m[3]), ctime: Number(m[4]), type: m[5] as string });
    } else if (last !== undefined && line !== '') {
      const v = out.get(last) as Meta;
      out.delete(last);
      last = `${last}\n${line}`;
      out.set(last, v);
    }
  }
  return out;
}

export type Expect =
  | { ok: string } // status 0 and exactly this output (trailing newline trimmed)
  | { fails: RegExp } // non-zero status and output matching
  | { okMatch: RegExp }; // status 0 and output matching

export interface Check {
  label: string;
  /** Shell text run in the guest (may use redirections; runs in a { } group with stderr merged). */
  cmd: string;
  expect: Expect;
}

export interface CheckResult {
  status: number;
  out: string;
}

const ENOENT = /No such file or directory/;
const EROFS = /Read-only file system/;

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function base(p: string): string {
  return path.posix.basename(p);
}

/** Names in the host store directory that are not closure store paths (.links, .drv files, other outputs). */
export function outsideNames(fx: NixFixture): string[] {
  const inside = new Set(fx.closure.map(base));
  return fs.readdirSync(fx.storeDir).filter((n) => !inside.has(n)).sort();
}

function text(fx: NixFixture, logical: string): string {
  return fs.readFileSync(hostPath(fx, logical), 'utf8').replace(/\n$/, '');
}

/** The read-side checks every boot runs: exec from the store, symlinks, `..`, names outside the closure. */
export function readChecks(fx: NixFixture): Check[] {
  const { app, lib, busybox: bb, symlinkPath: symp, singleFile, decoy, twinOutside, multiDoc } = fx.paths;
  const hello = text(fx, `${lib}/share/hello.txt`);
  const appTxt = text(fx, `${app}/share/app.txt`);
  const checks: Check[] = [
    { label: 'exec:store-busybox', cmd: `${bb}/bin/busybox echo ok`, expect: { ok: 'ok' } },
    // argv[0] "echo" through the applet symlink next to it, resolved by the guest.
    { label: 'exec:applet-symlink', cmd: `${bb}/bin/echo ok`, expect: { ok: 'ok' } },
    { label: 'exec:via-absolute-link', cmd: `${app}/bin/busybox echo ok`, expect: { ok: 'ok' } },
    { label: 'exec:shebang-script', cmd: `${lib}/bin/tool`, expect: { ok: 'cfs-lib tool' } },
    {
      label: 'exec:20-starts',
      cmd: `i=0; while [ $i -lt 20 ]; do ${bb}/bin/busybox true || exit 1; i=$((i + 1)); done; echo $i`,
      expect: { ok: '20' },
    },

    { label: 'sym:absolute', cmd: `cat ${app}/share/hello-abs`, expect: { ok: hello } },
    { label: 'sym:absolute-dir', cmd: `cat ${app}/share/lib-share/hello.txt`, expect: { ok: hello } },
    { label: 'sym:relative', cmd: `cat ${app}/share/app-rel`, expect: { ok: appTxt } },
    { label: 'sym:relative-up', cmd: `cat ${app}/bin/app-rel-up`, expect: { ok: appTxt } },
    { label: 'sym:relative-cross-path', cmd: `cat ${app}/share/hello-rel-cross`, expect: { ok: hello } },
    { label: 'sym:readlink-f', cmd: `readlink -f ${app}/share/hello-rel-cross`, expect: { ok: `${lib}/share/hello.txt` } },
    { label: 'sym:through-symlink-store-path', cmd: `cat ${app}/share/via-symlink-path`, expect: { ok: hello } },
    { label: 'sym:store-path-is-symlink', cmd: `stat -c %F ${symp}`, expect: { ok: 'symbolic link' } },
    { label: 'sym:store-path-target', cmd: `readlink ${symp}`, expect: { ok: `${lib}/share/hello.txt` } },
    { label: 'sym:store-path-cat', cmd: `cat ${symp}`, expect: { ok: hello } },
    { label: 'sym:single-file-store-path', cmd: `cat ${singleFile}`, expect: { ok: text(fx, singleFile) } },
    { label: 'sym:dangling-relative', cmd: `cat ${app}/share/dangling-rel`, expect: { fails: ENOENT } },
    { label: 'sym:dangling-relative-target', cmd: `readlink ${app}/share/dangling-rel`, expect: { ok: 'does-not-exist' } },
    { label: 'sym:dangling-absolute', cmd: `cat ${app}/share/dangling-abs`, expect: { fails: ENOENT } },
    { label: 'sym:loop', cmd: `cat ${app}/share/loop-a`, expect: { fails: /Symbolic link loop|Too many levels of symbolic links/ } },
    { label: 'sym:odd-newline-name', cmd: `cat "${lib}/odd/$(printf 'new\\nline')"`, expect: { ok: 'newline' } },
    { label: 'sym:odd-utf8-name', cmd: `cat ${q(`${lib}/odd/ünïcødé-✓-名前`)}`, expect: { ok: 'utf8' } },

    // `..` at the mount root is the guest's own /nix (which holds only "store" in the initramfs), never the
    // host directory above the store (which holds "store" and "var" in the fixture).
    { label: 'dotdot:store-parent', cmd: 'ls -a -1 /nix/store/..', expect: { ok: '.\n..\nstore' } },
    { label: 'dotdot:lib-up-2', cmd: `ls -a -1 ${lib}/../..`, expect: { ok: '.\n..\nstore' } },
    { label: 'dotdot:lib-up-3-is-guest-root', cmd: `ls -1 ${lib}/../../.. | grep -x -e init -e run.sh`, expect: { ok: 'init\nrun.sh' } },
    { label: 'dotdot:same-inode-as-guest-nix', cmd: `[ "$(stat -c %d:%i ${lib}/../..)" = "$(stat -c %d:%i /nix)" ] && echo same`, expect: { ok: 'same' } },
    { label: 'dotdot:cd-up', cmd: `cd ${lib}/share && cd ../../../.. && pwd && ls run.sh`, expect: { ok: '/\nrun.sh' } },
    { label: 'dotdot:to-decoy', cmd: `cat ${lib}/../${base(decoy)}`, expect: { fails: ENOENT } },
    { label: 'dotdot:to-twin-outside', cmd: `cat ${app}/../${base(twinOutside)}/twin.txt`, expect: { fails: ENOENT } },

    { label: 'out:deep-secret', cmd: `cat ${twinOutside}/secret.txt`, expect: { fails: ENOENT } },
    { label: 'out:deep-twin', cmd: `cat ${twinOutside}/twin.txt`, expect: { fails: ENOENT } },
    { label: 'out:deep-doc', cmd: `cat ${multiDoc}/share/doc/README`, expect: { fails: ENOENT } },
    { label: 'out:decoy-file', cmd: `cat ${decoy}`, expect: { fails: ENOENT } },
    { label: 'out:links-dir', cmd: 'ls /nix/store/.links > /dev/null', expect: { fails: ENOENT } },
    { label: 'out:bogus-well-formed', cmd: 'stat /nix/store/00000000000000000000000000000000-missing', expect: { fails: ENOENT } },
  ];
  // Every host directory entry that is not a closure path must be unknown to the guest by its exact name.
  for (const n of outsideNames(fx)) {
    checks.push({ label: `out:name:${n}`, cmd: `stat -c %n ${q(`/nix/store/${n}`)}`, expect: { fails: ENOENT } });
  }
  return checks;
}

/**
 * Every kind of write, run on a read-write mount, so that the guest kernel sends each one to the daemon and
 * the EROFS is the daemon's answer. Targets exist (or their parent does), so ENOENT/EEXIST cannot stand in.
 */
export function writeChecks(fx: NixFixture): Check[] {
  const { app, lib, singleFile } = fx.paths;
  const f = `${app}/share/app.txt`;
  const w = (label: string, cmd: string): Check => ({ label: `w:${label}`, cmd, expect: { fails: EROFS } });
  return [
    w('create', `echo x > ${app}/share/new-file`),
    w('create-in-root', 'echo x > /nix/store/new-file'),
    w('open-trunc', `echo x > ${f}`),
    w('open-append', `echo x >> ${f}`),
    w('open-wronly-notrunc', `dd if=/dev/zero of=${f} bs=1 count=1 conv=notrunc`),
    w('truncate', `truncate -s 0 ${f}`),
    w('touch-new', `touch ${app}/share/touched`),
    w('touch-existing', `touch ${f}`),
    w('chmod', `chmod 0777 ${f}`),
    w('chown', `chown 1:1 ${f}`),
    w('mkdir', `mkdir ${app}/new-dir`),
    w('mkdir-in-root', 'mkdir /nix/store/00000000000000000000000000000000-new'),
    w('rmdir', `rmdir ${lib}/share/empty-dir`),
    w('rename', `mv ${f} ${app}/share/renamed`),
    w('mknod-fifo', `mknod ${app}/share/fifo p`),
    w('mknod-char', `mknod ${app}/share/null c 1 3`),
    w('symlink', `ln -s app.txt ${app}/share/new-link`),
    w('hardlink', `ln ${f} ${app}/share/new-hardlink`),
    // Removals last: should one succeed (a broken daemon), the checks above still had their targets.
    w('rm', `rm -f ${f}`),
    w('rm-store-path', `rm -f ${singleFile}`),
  ];
}

export function guestScript(fx: NixFixture, checks: Check[], opts: { afterWrites: boolean }): string {
  const bases = fx.closure.map(base).sort().map(q).join(' ');
  const lines = [
    '# closurefs e2e: gather, never stop early (each check records its own status).',
    'S=/nix/store',
    'sec() { printf "==CFS== %s\\n" "$1"; }',
    // Newlines become tabs so one check stays one line; no check output contains a tab.
    'res() { printf "R|%s|%s|%s\\n" "$1" "$2" "$(printf "%s" "$3" | tr "\\n" "\\t")"; }',
    'sec version', 'busybox 2>&1 | head -n1',
    'sec mount', 'grep " /nix/store " /proc/mounts',
    'sec ls', 'ls -a -1 $S',
    'sec listing', `sh /cfs/listing.sh $S ${bases}`,
    'sec meta', `sh /cfs/meta.sh $S ${bases}`,
    'sec statfs', "stat -f -c '%s|%S|%b|%f|%a|%c|%d' $S",
    // The guest's page cache (KiB) before and after reading the large file once, then after opening it again.
    'sec page-cache',
    'cached() { awk \'/^Cached:/ {print $2}\' /proc/meminfo; }',
    `sync; echo 3 > /proc/sys/vm/drop_caches; c0=$(cached); cat ${q(fx.files.large.path)} > /dev/null; c1=$(cached); : < ${q(fx.files.large.path)}; c2=$(cached)`,
    'echo "$c0|$c1|$c2"',
    'sec checks',
  ];
  for (const c of checks) {
    // A subshell: a check that cds or exits cannot disturb the next one.
    lines.push(`o=$( ( ${c.cmd}\n) 2>&1 ); res ${q(c.label)} $? "$o"`);
  }
  if (opts.afterWrites) lines.push('sec listing-after', `sh /cfs/listing.sh $S ${bases}`);
  lines.push('sec end', 'exit 0');
  return `${lines.join('\n')}\n`;
}

export interface GuestOutput {
  sections: Map<string, string>;
  checks: Map<string, CheckResult>;
}

export function parseGuestOutput(output: string): GuestOutput {
  const sections = new Map<string, string>();
  const parts = output.split(/^==CFS== /m);
  for (const p of parts.slice(1)) {
    const nl = p.indexOf('\n');
    const name = nl < 0 ? p : p.slice(0, nl);
    sections.set(name, nl < 0 ? '' : p.slice(nl + 1));
  }
  const checks = new Map<string, CheckResult>();
  for (const line of (sections.get('checks') ?? '').split('\n')) {
    const m = /^R\|(.*?)\|(\d+)\|(.*)$/.exec(line);
    if (m === null) continue;
    checks.set(m[1] as string, { status: Number(m[2]), out: (m[3] as string).replace(/\t/g, '\n').replace(/\n$/, '') });
  }
  return { sections, checks };
}

/** Why a check result does not meet its expectation, or undefined when it does. */
export function checkProblem(c: Check, r: CheckResult | undefined): string | undefined {
  if (r === undefined) return `${c.label}: no result (the guest script did not get that far)`;
  const e = c.expect;
  const shown = r.out.length > 300 ? `${r.out.slice(0, 300)}… (${r.out.length} chars)` : r.out;
  const got = `status ${r.status}, output ${JSON.stringify(shown)}`;
  if ('ok' in e) return r.status === 0 && r.out === e.ok ? undefined : `${c.label}: want status 0 and ${JSON.stringify(e.ok)}; got ${got}`;
  if ('okMatch' in e) return r.status === 0 && e.okMatch.test(r.out) ? undefined : `${c.label}: want status 0 and ${String(e.okMatch)}; got ${got}`;
  return r.status !== 0 && e.fails.test(r.out) ? undefined : `${c.label}: want failure matching ${String(e.fails)}; got ${got}`;
}

/** Runs LISTING_SH or META_SH on the host with the fixture's static busybox (the one the guest execs too). */
export function hostRun(fx: NixFixture, scriptText: string, dir: string, names: string[]): string {
  const bb = hostPath(fx, fx.files.busyboxBinary);
  const r = spawnSync(bb, ['sh', '-c', scriptText, 'sh', dir, ...names], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    // Debian's static busybox runs its own applets for every command name (also from xargs); an empty PATH
    // makes sure no host coreutils binary slips in. The guest's PATH holds only busybox applet links.
    env: { PATH: '/nonexistent', LC_ALL: 'C' },
  });
  if (r.status !== 0) throw new Error(`host ${bb} sh failed (${String(r.status)}): ${r.stderr}`);
  return r.stdout;
}

export function hostBusyboxVersion(fx: NixFixture): string {
  const r = spawnSync(hostPath(fx, fx.files.busyboxBinary), [], { encoding: 'utf8' });
  return (r.stdout.split('\n')[0] ?? '').trim();
}
