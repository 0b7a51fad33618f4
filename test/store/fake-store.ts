/**
 * A hand-made directory shaped like a Nix store, for view tests that must not wait
 * for Nix: store paths that are directories, a single file and a symlink; absolute,
 * relative and dangling symlinks; odd names; a file hard-linked from a path outside
 * the closure (as nix-store --optimise leaves it); things that must stay invisible
 * (.links, a .drv, another output, another closure).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nixFixture, type NixFixture } from '../fixtures/nix/store';

/** A valid 32-character nix-base32 hash made from a seed digit. */
export function fakeHash(seed: number): string {
  const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
  let s = '';
  for (let i = 0; i < 32; i++) s += alphabet[(seed * 7 + i * 3) % 32];
  return s;
}

export interface FakeStore {
  root: string;
  storeDir: string;
  /** Basenames in the closure. */
  closure: string[];
  /** Basenames present on the host but outside the closure. */
  outside: string[];
  names: {
    app: string;
    lib: string;
    single: string;
    symlinkPath: string;
    outsideTwin: string;
    doc: string;
  };
  /** The odd file names inside app/odd. */
  oddNames: Buffer[];
  /** Number of files in app/many. */
  manyCount: number;
  largeContent: Buffer;
  cleanup(): void;
}

function write(p: string, content: string | Buffer, mode = 0o444): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  fs.chmodSync(p, mode);
}

export function makeFakeStore(manyCount = 3000): FakeStore {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-store-'));
  const storeDir = path.join(root, 'nix', 'store');
  fs.mkdirSync(storeDir, { recursive: true });
  const n = {
    app: `${fakeHash(1)}-app`,
    lib: `${fakeHash(2)}-lib`,
    single: `${fakeHash(3)}-single-file`,
    symlinkPath: `${fakeHash(4)}-symlink-path`,
    outsideTwin: `${fakeHash(5)}-twin-outside`,
    doc: `${fakeHash(6)}-app-doc`,
  };
  const s = (...p: string[]): string => path.join(storeDir, ...p);

  write(s(n.app, 'bin', 'hello'), '#!/bin/sh\necho hello\n', 0o555);
  write(s(n.app, 'share', 'doc.txt'), 'app documentation\n');
  const largeContent = randomBytes(1024 * 1024 + 123);
  write(s(n.app, 'share', 'large.bin'), largeContent);
  fs.symlinkSync(`/nix/store/${n.lib}/lib/libfoo.so`, s(n.app, 'lib-abs'));
  fs.symlinkSync('../share/doc.txt', s(n.app, 'bin', 'doc-rel'));
  fs.symlinkSync('/nix/store/00000000000000000000000000000000-missing/x', s(n.app, 'dangling'));
  fs.symlinkSync('/etc/passwd', s(n.app, 'escape-abs'));
  fs.symlinkSync('../../../../../../etc', s(n.app, 'escape-rel'));
  const oddNames = ['with space', 'new\nline', 'ütf8-ñ', '-leading-dash', `quo"te'`].map((x) => Buffer.from(x));
  for (const odd of oddNames) write(path.join(s(n.app, 'odd'), odd.toString()), `odd ${odd.toString()}\n`);
  fs.mkdirSync(s(n.app, 'many'));
  for (let i = 0; i < manyCount; i++) write(s(n.app, 'many', `f${String(i).padStart(5, '0')}`), `${i}\n`);
  fs.mkdirSync(s(n.app, 'empty-dir'));

  write(s(n.lib, 'lib', 'libfoo.so'), 'not really an ELF\n', 0o555);
  write(s(n.lib, 'share', 'twin.txt'), 'identical content\n');
  // The optimise twin: the same inode in a path outside the closure.
  fs.mkdirSync(s(n.outsideTwin));
  fs.linkSync(s(n.lib, 'share', 'twin.txt'), s(n.outsideTwin, 'twin.txt'));
  write(s(n.single), 'I am a whole store path\n');
  fs.symlinkSync(`/nix/store/${n.app}/bin/hello`, s(n.symlinkPath));
  write(s(n.doc, 'share', 'doc', 'manual.txt'), 'other output\n');
  fs.mkdirSync(s('.links'));
  fs.linkSync(s(n.lib, 'share', 'twin.txt'), s('.links', '1h5zlv0r6y2kaz2jm8j0ny3cvhwhqybf0h0fw1wzvbczpdr71ahc'));
  write(s(`${fakeHash(7)}-app.drv`), 'Derive(...)');

  // Make directories read-only like a real store (files already are).
  for (const dir of [s(n.app, 'bin'), s(n.app, 'share'), s(n.app, 'odd'), s(n.app, 'many'), s(n.app)]) fs.chmodSync(dir, 0o555);

  return {
    root,
    storeDir,
    closure: [n.app, n.lib, n.single, n.symlinkPath].sort(),
    outside: [n.outsideTwin, n.doc, `${fakeHash(7)}-app.drv`, '.links'],
    names: n,
    oddNames,
    manyCount,
    largeContent,
    cleanup: () => {
      fs.chmodSync(s(n.app), 0o755);
      for (const d of ['bin', 'share', 'odd', 'many']) fs.chmodSync(s(n.app, d), 0o755);
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * The real Nix-built fixture (test/fixtures/nix/build-store.sh): built on first use
 * (about a second, cached), so tests that use it run everywhere or fail loudly,
 * never skip.
 */
export type NixFixtureManifest = NixFixture;

export function findNixFixture(): NixFixtureManifest {
  return nixFixture();
}
