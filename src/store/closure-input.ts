/**
 * Closure inputs: which store paths the view serves. Formats are detected by
 * content, not by name:
 *   - one store path a line (nix-store -qR, nix path-info -r, closureInfo's store-paths)
 *   - a closureInfo directory (it holds store-paths)
 *   - nix path-info -r --json, array form [{"path": ...}] or object form {"/nix/store/...": {...}}
 *   - registration text (nix-store --dump-db, closureInfo's registration): blocks of
 *     path, [hash, size,] deriver, reference count, references
 * and `closureOf()` asks the store itself (nix-store --query --requisites).
 *
 * Every path is checked: inside the logical store directory (/nix/store), a store
 * path itself (not something below one), a valid name, and present on the host.
 * Errors name the file and line.
 */
import { spawnSync } from 'node:child_process';
import { lstatSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { ClosurefsError } from '../errors';

export class ClosureInputError extends ClosurefsError {
  override readonly code = 'CFS_ERR_CLOSURE_INPUT';
  constructor(
    message: string,
    readonly file?: string,
    readonly line?: number,
    options?: { cause?: unknown },
  ) {
    super(file === undefined ? message : `${file}${line === undefined ? '' : `:${line}`}: ${message}`, options);
  }
}

/** The store directory the closure files speak of; the host copy may live elsewhere (--store-dir). */
export const LOGICAL_STORE_DIR = '/nix/store';
const NIX_BASE32 = '0123456789abcdfghijklmnpqrsvwxyz';
const HASH_LEN = 32;
/** Nix's own limit on the name part of a store path. */
const NAME_MAX_LEN = 211;
const HASH_RE = new RegExp(`^[${NIX_BASE32}]{${HASH_LEN}}$`);
/** Characters Nix allows in store path names; a name may not start with a dot. */
const NAME_RE = /^[A-Za-z0-9+\-._?=]+$/;

export type ClosureFormat = 'store-paths' | 'closure-info' | 'path-info-json' | 'registration';

/** A store path as found in an input, with where it was found (for error messages). */
export interface StorePathRef {
  path: string;
  file: string;
  line: number;
}

export interface ParsedClosure {
  format: ClosureFormat;
  refs: StorePathRef[];
}

/** Why a store path basename is invalid, or undefined when it is fine. */
export function basenameProblem(base: string): string | undefined {
  const dash = base.indexOf('-');
  if (dash !== HASH_LEN) return `'${base}' does not start with a ${HASH_LEN}-character hash and '-'`;
  if (!HASH_RE.test(base.slice(0, HASH_LEN))) return `'${base}' has characters outside nix-base32 (${NIX_BASE32}) in its hash`;
  const name = base.slice(HASH_LEN + 1);
  if (name.length === 0) return `'${base}' has an empty name`;
  if (name.length > NAME_MAX_LEN) return `'${base}' has a name longer than ${NAME_MAX_LEN} characters`;
  if (name.startsWith('.')) return `'${base}' has a name starting with '.'`;
  if (!NAME_RE.test(name)) return `'${base}' has characters Nix does not allow in a name`;
  return undefined;
}

/** The basename of a logical store path, or a ClosureInputError naming where it came from. */
export function storePathBasename(ref: StorePathRef, storeDir = LOGICAL_STORE_DIR): string {
  const prefix = `${storeDir}/`;
  if (!ref.path.startsWith(prefix)) throw new ClosureInputError(`'${ref.path}' is outside ${storeDir}`, ref.file, ref.line);
  const base = ref.path.slice(prefix.length).replace(/\/+$/, '');
  if (base.includes('/')) throw new ClosureInputError(`'${ref.path}' is inside a store path, not a store path`, ref.file, ref.line);
  const problem = basenameProblem(base);
  if (problem !== undefined) throw new ClosureInputError(`not a store path: ${problem}`, ref.file, ref.line);
  return base;
}

// ---- format detection and parsing ---------------------------------------------------

function splitLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

/** A NAR hash line: bare base16 (Nix 2.8 --dump-db) or `algo:digest` (other versions). */
const HASH_LINE_RE = /^(?:[0-9a-f]{32,128}|(?:md5|sha1|sha256|sha512)[:-][0-9a-zA-Z+/=]+)$/;
const DIGITS_RE = /^\d+$/;

/** Detects the format of closure text and parses it; `file` names it in errors. */
export function parseClosureText(text: string, file: string): ParsedClosure {
  const trimmed = text.trimStart();
  if (trimmed.startsWith('[') || trimmed.startsWith('{')) return { format: 'path-info-json', refs: parsePathInfoJson(text, file) };
  const lines = splitLines(text);
  if (lines.length >= 2 && (HASH_LINE_RE.test(lines[1]) || (lines.length >= 3 && DIGITS_RE.test(lines[2])))) {
    return { format: 'registration', refs: parseRegistration(lines, file) };
  }
  return { format: 'store-paths', refs: parseStorePaths(lines, file) };
}

/** One store path a line; blank lines are ignored, anything else on a line is an error. */
export function parseStorePaths(lines: readonly string[], file: string): StorePathRef[] {
  const refs: StorePathRef[] = [];
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    if (/\s/.test(line)) throw new ClosureInputError(`expected one store path per line, got '${line}'`, file, i + 1);
    refs.push({ path: line, file, line: i + 1 });
  });
  return refs;
}

/*
 * nix-store --dump-db / --register-validity text, one block per path:
 *   path / [narHash / narSize] / deriver (may be empty) / reference count / references...
 * The blocks' paths are the closure; references are checked for form only.
 */
export function parseRegistration(lines: readonly string[], file: string): StorePathRef[] {
  const withHash = lines.length >= 2 && HASH_LINE_RE.test(lines[1]);
  const refs: StorePathRef[] = [];
  let i = 0;
  const at = (what: string): string => {
    if (i >= lines.length) throw new ClosureInputError(`registration ends where ${what} was expected`, file, i + 1);
    return lines[i++];
  };
  while (i < lines.length) {
    if (lines.slice(i).every((l) => l.trim() === '')) break;
    const pathLine = i + 1;
    refs.push({ path: at('a store path'), file, line: pathLine });
    if (withHash) {
      if (!HASH_LINE_RE.test(at('a hash'))) throw new ClosureInputError('expected a NAR hash', file, i);
      if (!DIGITS_RE.test(at('a size'))) throw new ClosureInputError('expected a NAR size', file, i);
    }
    const deriver = at('a deriver line');
    if (deriver !== '') storePathBasename({ path: deriver, file, line: i });
    const count = at('a reference count');
    if (!DIGITS_RE.test(count)) throw new ClosureInputError(`expected a reference count, got '${count}'`, file, i);
    for (let k = 0; k < Number(count); k++) storePathBasename({ path: at('a reference'), file, line: i });
  }
  return refs;
}

/** Line (1-based) of character index `pos` in text. */
function lineAt(text: string, pos: number): number {
  let line = 1;
  for (let k = 0; k < pos && k < text.length; k++) if (text.charCodeAt(k) === 10) line++;
  return line;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The line where a store path is given in JSON text, for error messages: as a
 * "path" value (array form) or as a key (object form), else its first mention.
 */
function lineOfPath(text: string, p: string): number {
  const q = escapeRegExp(JSON.stringify(p));
  const m = new RegExp(`"path"\\s*:\\s*${q}|${q}\\s*:`).exec(text);
  const pos = m !== null ? m.index : text.indexOf(JSON.stringify(p));
  return pos < 0 ? 1 : lineAt(text, pos);
}

/** Whether a JSON.parse failure only says the text stopped early (at or past its end). */
function endedEarly(message: string, length: number): boolean {
  const pos = /position (\d+)/.exec(message);
  return /end of JSON input/.test(message) || (pos !== null && Number(pos[1]) >= length);
}

/**
 * The line of a JSON syntax error. V8 does not always say where, so find the
 * shortest prefix of whole lines that fails for a reason other than ending early
 * (a binary search: a prefix fails that way exactly when it reaches the error).
 */
function jsonErrorLine(text: string): number | undefined {
  const lines = text.split('\n');
  const broken = (k: number): boolean => {
    const prefix = lines.slice(0, k).join('\n');
    try {
      JSON.parse(prefix);
      return false;
    } catch (e) {
      return !endedEarly((e as Error).message, prefix.length);
    }
  };
  if (!broken(lines.length)) return undefined;
  let lo = 1;
  let hi = lines.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (broken(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* nix path-info --json: [{"path": "/nix/store/...", ...}] (Nix < 2.19) or {"/nix/store/...": {...} | null}. */
export function parsePathInfoJson(text: string, file: string): StorePathRef[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    const message = (e as Error).message.split('\n')[0];
    throw new ClosureInputError(`invalid JSON: ${message}`, file, jsonErrorLine(text), { cause: e });
  }
  const ref = (p: string): StorePathRef => ({ path: p, file, line: lineOfPath(text, p) });
  if (Array.isArray(doc)) {
    return doc.map((item, k) => {
      if (typeof item === 'string') return ref(item);
      const p = (item as { path?: unknown } | null)?.path;
      if (typeof p !== 'string') throw new ClosureInputError(`element ${k} has no "path" string`, file, undefined);
      if ((item as { valid?: unknown }).valid === false) throw new ClosureInputError(`'${p}' is not valid in the store that produced this`, file, lineOfPath(text, p));
      return ref(p);
    });
  }
  if (doc !== null && typeof doc === 'object') {
    return Object.entries(doc as Record<string, unknown>).map(([p, info]) => {
      if (info === null) throw new ClosureInputError(`'${p}' is not valid in the store that produced this`, file, lineOfPath(text, p));
      return ref(p);
    });
  }
  throw new ClosureInputError('JSON is neither an array nor an object of store paths', file, 1);
}

/** Reads a closure file, or a closureInfo directory (its store-paths file). */
export function readClosureFile(file: string): ParsedClosure {
  let isDir: boolean;
  try {
    isDir = statSync(file).isDirectory();
  } catch (e) {
    throw new ClosureInputError(`cannot read: ${(e as Error).message}`, file, undefined, { cause: e });
  }
  if (isDir) {
    const storePaths = path.join(file, 'store-paths');
    const text = readText(storePaths, `a closureInfo directory needs a store-paths file`);
    return { format: 'closure-info', refs: parseStorePaths(splitLines(text), storePaths) };
  }
  return parseClosureText(readText(file, 'cannot read'), file);
}

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new ClosureInputError(`${what}: ${(e as Error).message}`, file, undefined, { cause: e });
  }
}

export interface ClosureOfOptions {
  /** nix-store executable; default 'nix-store' from PATH. */
  nixStoreBin?: string;
  /** Passed as --store: the root of a chroot store (the directory holding nix/store). */
  store?: string;
}

/** The closure of a store path, asking the store (nix-store --query --requisites). */
export function closureOf(storePath: string, opts: ClosureOfOptions = {}): StorePathRef[] {
  const args = [...(opts.store !== undefined ? ['--store', opts.store] : []), '--query', '--requisites', storePath];
  const label = `nix-store --query --requisites ${storePath}`;
  const r = spawnSync(opts.nixStoreBin ?? 'nix-store', args, { encoding: 'utf8', maxBuffer: 512 * 1024 * 1024 });
  if (r.error !== undefined) throw new ClosureInputError(`cannot run nix-store: ${r.error.message}`, label, undefined, { cause: r.error });
  if (r.status !== 0) throw new ClosureInputError(`failed (status ${r.status}): ${r.stderr.trim()}`, label);
  return parseStorePaths(splitLines(r.stdout), label);
}

export interface LoadClosureOptions {
  /** --closure FILE (repeatable): files or closureInfo directories. */
  files?: readonly string[];
  /** --closure-of PATH (repeatable). */
  of?: readonly string[];
  /** Host directory holding the store paths; default /nix/store. */
  storeDir?: string;
  /** Warn about (and leave out) paths missing under storeDir instead of failing. */
  allowMissing?: boolean;
  warn?: (message: string) => void;
  nixStoreBin?: string;
  /** --store for closureOf; default: derived from storeDir when it ends in /nix/store (a chroot store). */
  nixStore?: string;
}

/** The chroot store root for a store dir like /tmp/s/nix/store, or undefined for /nix/store itself. */
export function chrootStoreOf(storeDir: string): string | undefined {
  const norm = path.resolve(storeDir);
  if (norm === LOGICAL_STORE_DIR || !norm.endsWith(LOGICAL_STORE_DIR)) return undefined;
  return norm.slice(0, -LOGICAL_STORE_DIR.length);
}

/** Loads, validates and merges closure inputs: sorted unique store path basenames. */
export function loadClosure(opts: LoadClosureOptions): string[] {
  const storeDir = opts.storeDir ?? LOGICAL_STORE_DIR;
  const refs: StorePathRef[] = [];
  for (const f of opts.files ?? []) refs.push(...readClosureFile(f).refs);
  const store = opts.nixStore ?? chrootStoreOf(storeDir);
  for (const p of opts.of ?? []) refs.push(...closureOf(p, { nixStoreBin: opts.nixStoreBin, store }));
  if (refs.length === 0) throw new ClosureInputError('the closure is empty: no store paths in the inputs');
  const bases = new Map<string, StorePathRef>();
  for (const ref of refs) {
    const base = storePathBasename(ref);
    if (!bases.has(base)) bases.set(base, ref);
  }
  const present = [...bases].filter(([base, ref]) => presentOnHost(storeDir, base, ref, opts));
  return present.map(([base]) => base).sort();
}

function presentOnHost(storeDir: string, base: string, ref: StorePathRef, opts: LoadClosureOptions): boolean {
  try {
    lstatSync(path.join(storeDir, base));
    return true;
  } catch (e) {
    const err = new ClosureInputError(`'${ref.path}' is missing under ${storeDir} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, ref.file, ref.line);
    if (opts.allowMissing !== true) throw err;
    opts.warn?.(`${err.message}; serving the closure without it`);
    return false;
  }
}
