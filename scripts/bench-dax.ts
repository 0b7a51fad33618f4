/**
 * DAX window vs FUSE_READ, same file, same daemon process, same run (no guest):
 * the test frontend plays a VMM with a real window (test/harness/dax-window.ts).
 *   ring:      READ of 1 MiB, 4 per kick, bytes copied through the ring into guest memory
 *   dax cold:  SETUPMAPPING of each 2 MiB range (SHMEM_MAP to the VMM), then the window read once
 *   dax warm:  the mapped window read again: page-cache loads, no daemon request at all
 * "Read" is a copy of the bytes into a private buffer and a checksum over them, the same for all
 * three, so the numbers compare what a guest gets.
 *
 *   node dist/scripts/bench-dax.js [--quick]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InHeader, Opcode, OutHeader, ReadIn, SetupMappingIn } from '../src/fuse/abi';
import { DaxWindowFrontend } from '../test/harness/dax-window';
import { Frontend, PF } from '../test/harness/frontend';
import { FuseClient, encode } from '../test/harness/fuse-client';
import { startDaemon } from '../vm-fixtures/daemons';
import { benchTree } from './bench-daemon';

const MiB = 1 << 20;
const FILE = 64 * MiB;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

let unique = 1n;
function header(opcode: number, nodeid: number, bodyLen: number): Buffer {
  return encode(InHeader, { len: InHeader.SIZE + bodyLen, opcode, unique: unique++, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
}

/** Copies bytes out and folds them, so every method pays for touching every byte once. */
function consume(src: Buffer, into: Buffer): number {
  src.copy(into, 0, 0, src.length);
  let x = 0;
  for (let i = 0; i < src.length; i += 4096) x = (x + into[i]) | 0;
  return x;
}

export async function benchDax(quick: boolean): Promise<{ ring: number; daxCold: number; daxWarm: number }> {
  const tree = benchTree();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-dax-'));
  const daemon = await startDaemon({ kind: 'closurefs', storeDir: tree.storeDir, closureFiles: [tree.closureFile], socketDir: dir, logLevel: 'warn', extraArgs: ['--dax-window', `${FILE / MiB}M`] });
  const vmm = new DaxWindowFrontend(FILE);
  const fe = await Frontend.connect(daemon.socket, {
    regions: [{ gpa: 0, size: 64 * MiB }],
    extraProtocolFeatures: PF.SHMEM,
    onBackendRequest: (req) => BigInt(vmm.handle(req.request, req.payload, req.fds[0])),
    connectTimeoutMs: 10_000,
    timeoutMs: 30_000,
  });
  try {
    await fe.handshake();
    const client = new FuseClient((readable, sizes) => fe.request(1, readable, sizes));
    await client.init({ flags: 0x7bfffffb | (1 << 26) });
    const big = await client.walk(`${tree.base}/big.bin`);
    const fh = (await client.open(big.nodeid)).fh;
    const scratch = Buffer.alloc(2 * MiB);
    const samples = { ring: [] as number[], daxCold: [] as number[], daxWarm: [] as number[] };
    const rounds = quick ? 3 : 7;
    for (let round = 0; round < rounds + 1; round++) {
      let t = process.hrtime.bigint();
      for (let off = 0; off < FILE; off += 4 * MiB) {
        const chains = [0, 1, 2, 3].map((k) => {
          const body = encode(ReadIn, { fh, offset: off + k * MiB, size: MiB, readFlags: 0, lockOwner: 0n, flags: 0 });
          return { readable: [header(Opcode.READ, big.nodeid, body.length), body], writableSizes: [OutHeader.SIZE, MiB] };
        });
        for (const c of await fe.batch(1, chains)) consume(c.written.subarray(OutHeader.SIZE), scratch);
      }
      const ring = FILE / MiB / (Number(process.hrtime.bigint() - t) / 1e9);
      // Unmap everything so each cold round really sends SHMEM_MAPs.
      const unmap = Buffer.alloc(4 + 16);
      unmap.writeUInt32LE(1, 0);
      unmap.writeBigUInt64LE(0n, 4);
      unmap.writeBigUInt64LE(BigInt(FILE), 12);
      await client.call(Opcode.REMOVEMAPPING, 1, [unmap]);
      t = process.hrtime.bigint();
      for (let off = 0; off < FILE; off += 2 * MiB) {
        const body = encode(SetupMappingIn, { fh: 0xffffffffffffffffn, foffset: BigInt(off), len: BigInt(2 * MiB), flags: 2n, moffset: BigInt(off) });
        await client.call(Opcode.SETUPMAPPING, big.nodeid, [body]);
        consume(vmm.read(off, 2 * MiB), scratch);
      }
      const daxCold = FILE / MiB / (Number(process.hrtime.bigint() - t) / 1e9);
      t = process.hrtime.bigint();
      for (let off = 0; off < FILE; off += 2 * MiB) consume(vmm.read(off, 2 * MiB), scratch);
      const daxWarm = FILE / MiB / (Number(process.hrtime.bigint() - t) / 1e9);
      if (round === 0) continue; // warm-up round
      samples.ring.push(ring);
      samples.daxCold.push(daxCold);
      samples.daxWarm.push(daxWarm);
    }
    return { ring: median(samples.ring), daxCold: median(samples.daxCold), daxWarm: median(samples.daxWarm) };
  } finally {
    fe.close();
    await daemon.stop();
    vmm.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function daxMarkdown(r: { ring: number; daxCold: number; daxWarm: number }): string {
  const f = (n: number) => Math.round(n).toLocaleString('en-US');
  return [
    '| reading a 64 MiB file (no guest) | MiB/s | vs FUSE_READ |',
    '| --- | ---: | ---: |',
    `| FUSE_READ through the ring, 1 MiB requests | ${f(r.ring)} | 1.00x |`,
    `| DAX, first read: SETUPMAPPING (SHMEM_MAP) per 2 MiB, then the window | ${f(r.daxCold)} | ${(r.daxCold / r.ring).toFixed(2)}x |`,
    `| DAX, mapped: the window again, no daemon request | ${f(r.daxWarm)} | ${(r.daxWarm / r.ring).toFixed(2)}x |`,
  ].join('\n');
}

if (require.main === module) {
  benchDax(process.argv.includes('--quick')).then(
    (r) => console.log(daxMarkdown(r)),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
