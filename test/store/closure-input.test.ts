import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  ClosureInputError,
  basenameProblem,
  chrootStoreOf,
  closureOf,
  loadClosure,
  parseClosureText,
  readClosureFile,
} from '../../src/store/closure-input';
import { fakeHash, findNixFixture } from './fake-store';

const A = `/nix/store/${fakeHash(1)}-app`;
const B = `/nix/store/${fakeHash(2)}-lib-1.0`;
const C = `/nix/store/${fakeHash(3)}-single.txt`;

let dir: string;
let storeDir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-closure-'));
  storeDir = path.join(dir, 'store');
  fs.mkdirSync(storeDir);
  for (const p of [A, B]) fs.mkdirSync(path.join(storeDir, path.basename(p)));
  fs.writeFileSync(path.join(storeDir, path.basename(C)), 'x');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

function errorOf(f: () => unknown): ClosureInputError {
  try {
    f();
  } catch (e) {
    if (e instanceof ClosureInputError) return e;
    throw e;
  }
  throw new Error('expected a ClosureInputError');
}

describe('store path names', () => {
  test.each([
    [`${fakeHash(1)}-hello-2.12`, undefined],
    [`${fakeHash(1)}-a+b_c.d?e=f`, undefined],
    ['short-hello', 'does not start with a 32-character hash'],
    [`${'e'.repeat(32)}-hello`, 'nix-base32'],
    [`${'0'.repeat(31)}u-hello`, 'nix-base32'],
    [`${fakeHash(1)}-`, 'empty name'],
    [`${fakeHash(1)}-.hidden`, "starting with '.'"],
    [`${fakeHash(1)}-has space`, 'does not allow'],
    [`${fakeHash(1)}-${'n'.repeat(212)}`, 'longer than 211'],
  ])('%s', (base, problem) => {
    const p = basenameProblem(base);
    if (problem === undefined) expect(p).toBeUndefined();
    else expect(p).toContain(problem);
  });
});

describe('formats, detected by content', () => {
  test('one store path a line (nix-store -qR), blank lines and CRLF tolerated', () => {
    const r = parseClosureText(`${A}\n\n${B}\r\n${C}\n`, 'list');
    expect(r.format).toBe('store-paths');
    expect(r.refs.map((x) => [x.path, x.line])).toEqual([[A, 1], [B, 3], [C, 4]]);
  });

  test('a closureInfo directory (store-paths inside)', () => {
    const ci = path.join(dir, 'closure-info');
    fs.mkdirSync(ci, { recursive: true });
    fs.writeFileSync(path.join(ci, 'store-paths'), `${A}\n${B}\n`);
    fs.writeFileSync(path.join(ci, 'registration'), '');
    const r = readClosureFile(ci);
    expect(r.format).toBe('closure-info');
    expect(r.refs.map((x) => x.path)).toEqual([A, B]);
  });

  test('nix path-info -r --json, array form', () => {
    const text = JSON.stringify([{ path: A, narSize: 1, references: [B] }, { path: B, references: [] }], null, 2);
    const r = parseClosureText(text, 'pi.json');
    expect(r.format).toBe('path-info-json');
    expect(r.refs.map((x) => x.path)).toEqual([A, B]);
    expect(r.refs[1].line).toBe(text.split('\n').findIndex((l) => l.includes(B) && l.includes('"path"')) + 1);
  });

  test('nix path-info -r --json, object form', () => {
    const r = parseClosureText(JSON.stringify({ [A]: { narSize: 1 }, [C]: { narSize: 2 } }), 'pi.json');
    expect(r.refs.map((x) => x.path)).toEqual([A, C]);
  });

  test('registration text with bare hex hashes (nix-store --dump-db, Nix 2.8)', () => {
    const text = [A, 'ab'.repeat(32), '3656', `/nix/store/${fakeHash(9)}-app.drv`, '2', B, C, B, 'cd'.repeat(32), '152', '', '0', C, 'ef'.repeat(32), '10', '', '0', ''].join('\n');
    const r = parseClosureText(text, 'reg');
    expect(r.format).toBe('registration');
    expect(r.refs.map((x) => [x.path, x.line])).toEqual([[A, 1], [B, 8], [C, 13]]);
  });

  test('registration text with algo:hash and without hashes', () => {
    const withAlgo = [A, `sha256:${'1'.repeat(52)}`, '10', '', '1', B, B, `sha256:${'2'.repeat(52)}`, '5', '', '0'].join('\n');
    expect(parseClosureText(withAlgo, 'r').refs.map((x) => x.path)).toEqual([A, B]);
    const noHash = [A, '', '1', B, B, '', '0'].join('\n');
    const r = parseClosureText(noHash, 'r');
    expect([r.format, r.refs.map((x) => x.path)]).toEqual(['registration', [A, B]]);
  });
});

describe('errors name the file and line', () => {
  test('bad hash characters', () => {
    const f = file('bad-hash', `${A}\n${B}\n/nix/store/${'e'.repeat(32)}-x\n`);
    const e = errorOf(() => loadClosure({ files: [f], storeDir }));
    expect(e.code).toBe('CFS_ERR_CLOSURE_INPUT');
    expect(e.message).toMatch(new RegExp(`^${f}:3: not a store path: .*nix-base32`));
    expect([e.file, e.line]).toEqual([f, 3]);
  });

  test('a path outside /nix/store', () => {
    const f = file('outside', `${A}\n/etc/passwd\n`);
    expect(errorOf(() => loadClosure({ files: [f], storeDir })).message).toBe(`${f}:2: '/etc/passwd' is outside /nix/store`);
  });

  test('a path inside a store path', () => {
    const f = file('inside', `${A}/bin/sh\n`);
    expect(errorOf(() => loadClosure({ files: [f], storeDir })).message).toContain(`${f}:1: '${A}/bin/sh' is inside a store path`);
  });

  test('more than a path on a line', () => {
    const f = file('columns', `${A}  1234\n`);
    expect(errorOf(() => loadClosure({ files: [f], storeDir })).message).toContain(`${f}:1: expected one store path per line`);
  });

  test('invalid JSON reports the line of the syntax error', () => {
    const f = file('broken.json', `[\n  {"path": "${A}"},\n  {"path": }\n]\n`);
    const e = errorOf(() => loadClosure({ files: [f], storeDir }));
    expect(e.message).toMatch(new RegExp(`^${f}:3: invalid JSON`));
  });

  test('JSON elements without a path, and paths Nix marked invalid', () => {
    expect(errorOf(() => parseClosureText('[{"narSize": 1}]', 'j')).message).toBe('j: element 0 has no "path" string');
    expect(errorOf(() => parseClosureText(`{\n"${A}": null\n}`, 'j')).message).toBe(`j:2: '${A}' is not valid in the store that produced this`);
  });

  test('a malformed registration block', () => {
    const text = [A, 'ab'.repeat(32), '10', '', 'two', B].join('\n');
    expect(errorOf(() => parseClosureText(text, 'reg')).message).toBe("reg:5: expected a reference count, got 'two'");
    const truncated = [A, 'ab'.repeat(32), '10', '', '2', B].join('\n');
    expect(errorOf(() => parseClosureText(truncated, 'reg')).message).toBe('reg:7: registration ends where a reference was expected');
  });

  test('a path missing on the host: an error, or a warning with allowMissing', () => {
    const missing = `/nix/store/${fakeHash(8)}-gone`;
    const f = file('missing', `${A}\n${missing}\n`);
    expect(errorOf(() => loadClosure({ files: [f], storeDir })).message).toBe(`${f}:2: '${missing}' is missing under ${storeDir} (ENOENT)`);
    const warnings: string[] = [];
    expect(loadClosure({ files: [f], storeDir, allowMissing: true, warn: (m) => warnings.push(m) })).toEqual([path.basename(A)]);
    expect(warnings).toEqual([expect.stringContaining(`${f}:2:`)]);
  });

  test('a missing closure file, and an empty closure', () => {
    expect(errorOf(() => loadClosure({ files: [path.join(dir, 'nope')], storeDir })).message).toContain('nope: cannot read');
    expect(errorOf(() => loadClosure({ files: [file('empty', '\n\n')], storeDir })).message).toContain('the closure is empty');
  });
});

describe('loadClosure', () => {
  test('merges several inputs into sorted unique basenames', () => {
    const f1 = file('one', `${C}\n${A}\n`);
    const f2 = file('two.json', JSON.stringify([{ path: B }, { path: A }]));
    expect(loadClosure({ files: [f1, f2], storeDir })).toEqual([A, B, C].map((p) => path.basename(p)).sort());
  });

  test('closureOf runs nix-store --query --requisites, with --store for a chroot store', () => {
    const fake = file('fake-nix-store', `#!/bin/sh\necho "$@" > ${dir}/args\necho ${A}\necho ${B}\n`);
    fs.chmodSync(fake, 0o755);
    const chroot = path.join(dir, 'chroot');
    fs.mkdirSync(path.join(chroot, 'nix', 'store'), { recursive: true });
    for (const p of [A, B]) fs.mkdirSync(path.join(chroot, p));
    const got = loadClosure({ of: [A], storeDir: path.join(chroot, 'nix', 'store'), nixStoreBin: fake });
    expect(got).toEqual([path.basename(A), path.basename(B)]);
    expect(fs.readFileSync(path.join(dir, 'args'), 'utf8').trim()).toBe(`--store ${chroot} --query --requisites ${A}`);
    expect(chrootStoreOf('/nix/store')).toBeUndefined();
  });

  test('closureOf failures are ClosureInputErrors', () => {
    const failing = file('failing-nix-store', '#!/bin/sh\necho "path is not valid" >&2\nexit 1\n');
    fs.chmodSync(failing, 0o755);
    expect(errorOf(() => closureOf(A, { nixStoreBin: failing })).message).toContain('path is not valid');
    expect(errorOf(() => closureOf(A, { nixStoreBin: path.join(dir, 'no-such-binary') })).message).toContain('cannot run nix-store');
  });

  const fixture = findNixFixture();
  test('against the real Nix-built store: --closure-of and -qR output agree', () => {
    const viaStore = loadClosure({ of: [fixture.root], storeDir: fixture.storeDir });
    expect(viaStore).toEqual(fixture.closure.map((p) => path.basename(p)).sort());
    const f = file('fixture-closure', fixture.closure.join('\n') + '\n');
    expect(loadClosure({ files: [f], storeDir: fixture.storeDir })).toEqual(viaStore);
  });
});
