/**
 * Cursors over the buffers of a ScatterGather: a ChainReader over the device-readable
 * ones (the request) and a ChainWriter over the device-writable ones (the reply).
 * Both are bounded: nothing reads or writes past the sum of the buffers (or a
 * smaller limit), and every length is checked before it is used. A struct that
 * straddles two buffers goes through a small scratch copy; one that lies inside
 * a buffer is decoded or encoded in place.
 */
import { Buffer } from 'node:buffer';
import type { Codec } from './abi';
import { FuseDecodeError, FuseReplyOverflowError, InternalInvariantError } from './errno';

/** Structs are at most this big (fuse_entry_out + fuse_dirent); straddling ones are staged here. */
const SCRATCH_SIZE = 256;

/** Sum of buffer lengths, refusing anything that stops being an exact integer. */
export function totalLength(bufs: readonly Buffer[]): number {
  let total = 0;
  for (const b of bufs) {
    total += b.length;
    if (!Number.isSafeInteger(total)) throw new FuseDecodeError('chain length overflows');
  }
  return total;
}

/** A position inside a list of buffers, advanced only forward. */
class Cursor {
  idx = 0;
  off = 0;
  constructor(private readonly bufs: readonly Buffer[]) {}

  /** Moves n bytes forward; the caller has checked n against what is left. */
  advance(n: number): void {
    while (n > 0) {
      const room = this.bufs[this.idx].length - this.off;
      if (n < room) {
        this.off += n;
        return;
      }
      n -= room;
      this.idx++;
      this.off = 0;
    }
    this.skipEmpty();
  }

  /** Bytes left in the current buffer. */
  contiguous(): number {
    this.skipEmpty();
    return this.idx < this.bufs.length ? this.bufs[this.idx].length - this.off : 0;
  }

  current(): Buffer {
    return this.bufs[this.idx];
  }

  private skipEmpty(): void {
    while (this.idx < this.bufs.length && this.off >= this.bufs[this.idx].length) {
      this.idx++;
      this.off = 0;
    }
  }
}

export class ChainReader {
  readonly #bufs: readonly Buffer[];
  readonly #cursor: Cursor;
  #remaining: number;
  #scratch: Buffer | undefined;

  /** Reads at most `limit` bytes (default: all of them). */
  constructor(bufs: readonly Buffer[], limit = Infinity) {
    this.#bufs = bufs;
    this.#cursor = new Cursor(bufs);
    this.#remaining = Math.min(totalLength(bufs), limit);
  }

  get remaining(): number {
    return this.#remaining;
  }

  /** Stops reading `n` bytes before the current end (request extensions that trail the arguments). */
  excludeTail(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.#remaining) throw new FuseDecodeError(`tail of ${n} bytes exceeds the request`);
    this.#remaining -= n;
  }

  /** Decodes one struct; a request too short for it is EINVAL. */
  read<T>(codec: Codec<T>): T {
    const n = codec.SIZE;
    this.#need(n, codec);
    const c = this.#cursor;
    if (c.contiguous() >= n) {
      const v = codec.decode(c.current(), c.off);
      this.#consume(n);
      return v;
    }
    this.#scratch ??= Buffer.allocUnsafe(SCRATCH_SIZE);
    this.#copyOut(this.#scratch, n);
    return codec.decode(this.#scratch, 0);
  }

  /** Reads a struct if the request has room for it, else returns undefined and consumes nothing. */
  readOptional<T>(codec: Codec<T>): T | undefined {
    return this.#remaining >= codec.SIZE ? this.read(codec) : undefined;
  }

  /** The next n bytes: a view when contiguous, else a copy. */
  readBytes(n: number): Buffer {
    if (!Number.isSafeInteger(n) || n < 0) throw new FuseDecodeError(`bad length ${n}`);
    this.#need(n);
    if (n === 0) return Buffer.alloc(0); // the cursor may sit past the last buffer
    const c = this.#cursor;
    if (c.contiguous() >= n) {
      const view = c.current().subarray(c.off, c.off + n);
      this.#consume(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.#copyOut(out, n);
    return out;
  }

  /** Everything left in the request. */
  readRest(): Buffer {
    return this.readBytes(this.#remaining);
  }

  skip(n: number): void {
    this.#need(n);
    this.#consume(n);
  }

  #need(n: number, codec?: Codec<unknown>): void {
    if (n > this.#remaining) {
      const what = codec ? `a ${codec.SIZE}-byte struct` : `${n} bytes`;
      throw new FuseDecodeError(`request too short: wanted ${what}, ${this.#remaining} left`);
    }
  }

  #consume(n: number): void {
    this.#cursor.advance(n);
    this.#remaining -= n;
  }

  /** Copies n bytes that span buffers into dst and consumes them. */
  #copyOut(dst: Buffer, n: number): void {
    const c = this.#cursor;
    let done = 0;
    while (done < n) {
      const take = Math.min(c.contiguous(), n - done);
      if (take === 0) throw new InternalInvariantError('reader ran out of buffers inside its limit');
      this.#bufs[c.idx].copy(dst, done, c.off, c.off + take);
      this.#consume(take);
      done += take;
    }
  }
}

export class ChainWriter {
  readonly #bufs: readonly Buffer[];
  readonly #cursor: Cursor;
  readonly #capacity: number;
  #written = 0;
  #scratch: Buffer | undefined;

  /**
   * A writer over the writable buffers starting `start` bytes in, with room for at
   * most `limit` bytes. A start past the end leaves a writer with no room.
   */
  constructor(bufs: readonly Buffer[], start = 0, limit = Infinity) {
    const total = totalLength(bufs);
    this.#bufs = bufs;
    this.#cursor = new Cursor(bufs);
    const from = Math.min(start, total);
    this.#cursor.advance(from);
    this.#capacity = Math.max(0, Math.min(total - from, limit));
  }

  get bytesWritten(): number {
    return this.#written;
  }

  get available(): number {
    return this.#capacity - this.#written;
  }

  /** Encodes one struct at the current position; no room is FuseReplyOverflowError. */
  write<T>(codec: Codec<T>, value: T): void {
    const n = codec.SIZE;
    this.#need(n);
    const c = this.#cursor;
    if (c.contiguous() >= n) {
      codec.encode(value, c.current(), c.off);
      this.#produce(n);
      return;
    }
    this.#scratch ??= Buffer.allocUnsafe(SCRATCH_SIZE);
    codec.encode(value, this.#scratch, 0);
    this.#copyIn(this.#scratch, 0, n);
  }

  writeBytes(src: Buffer): void {
    this.#need(src.length);
    this.#copyIn(src, 0, src.length);
  }

  /** Writes n zero bytes (padding of variable-length records). */
  writeZeros(n: number): void {
    this.#need(n);
    const c = this.#cursor;
    let left = n;
    while (left > 0) {
      const take = Math.min(c.contiguous(), left);
      if (take === 0) throw new InternalInvariantError('writer ran out of buffers inside its capacity');
      c.current().fill(0, c.off, c.off + take);
      this.#produce(take);
      left -= take;
    }
  }

  /**
   * Views of the next n bytes of the guest's buffers, without advancing: a READ
   * fills them straight from the host file (readv into guest memory), then calls
   * advance() with the count it got. n must not exceed `available`.
   */
  views(n: number): Buffer[] {
    this.#need(n);
    const out: Buffer[] = [];
    let idx = this.#cursor.idx;
    let off = this.#cursor.off;
    let left = n;
    while (left > 0) {
      const b = this.#bufs[idx];
      const take = Math.min(b.length - off, left);
      // A whole buffer goes as it is: a 128 KiB READ fills 32 guest pages, and a
      // view made per page costs more than the copy into it.
      if (take > 0) out.push(off === 0 && take === b.length ? b : b.subarray(off, off + take));
      left -= take;
      idx++;
      off = 0;
    }
    return out;
  }

  /** Counts n bytes that were filled through views(). */
  advance(n: number): void {
    this.#need(n);
    this.#produce(n);
  }

  #need(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.available) {
      throw new FuseReplyOverflowError(`reply needs ${n} more bytes, ${this.available} left`);
    }
  }

  #produce(n: number): void {
    this.#cursor.advance(n);
    this.#written += n;
  }

  #copyIn(src: Buffer, from: number, n: number): void {
    const c = this.#cursor;
    let done = 0;
    while (done < n) {
      const take = Math.min(c.contiguous(), n - done);
      if (take === 0) throw new InternalInvariantError('writer ran out of buffers inside its capacity');
      src.copy(c.current(), c.off, from + done, from + done + take);
      this.#produce(take);
      done += take;
    }
  }
}
