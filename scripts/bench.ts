/**
 * `npm run bench [-- --quick]`: every benchmark, side by side with QEMU 7.2's
 * virtiofsd, in one run: daemon-level through the test frontend (this process),
 * the DAX window against FUSE_READ (closurefs only: virtiofsd 7.2 has no window),
 * then in a real guest (scripts/bench-guest, its own process). Prints markdown
 * tables of medians with closurefs / virtiofsd ratios; JSON goes to bench-results/.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { benchDaemon, markdown } from './bench-daemon';
import { benchDax, daxMarkdown } from './bench-dax';

const ROOT = path.resolve(__dirname, '..', '..');

async function main(): Promise<number> {
  const quick = process.argv.includes('--quick');
  const rows = await benchDaemon({ quick });
  const table = markdown(rows);
  const out = path.join(ROOT, 'bench-results', `daemon-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ quick, rows }, null, 2));
  const dax = await benchDax(quick);
  fs.writeFileSync(out, JSON.stringify({ quick, rows, dax }, null, 2));
  console.log(`${table}\n\n${daxMarkdown(dax)}\n\n(daemon-level medians; JSON in ${path.relative(ROOT, out)})\n`);
  const guest = spawnSync(process.execPath, [path.join(__dirname, 'bench-guest.js'), ...(quick ? ['--quick'] : [])], { stdio: 'inherit' });
  return guest.status ?? 1;
}

main().then(
  (s) => process.exit(s),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
