/**
 * The FUSE wire ABI from linux include/uapi/linux/fuse.h, protocol 7.38 as the
 * Debian 6.1 guest speaks it. Every struct is a codec object {SIZE, decode, encode}
 * over little-endian Buffer methods; its kernel layout is quoted above it.
 *
 * 64-bit fields that name things (nodeid, fh, offsets, sizes) decode to a JS number
 * when they fit in 53 bits and to Infinity otherwise: no valid nodeid, fh or
 * offset of ours is that large, so Infinity simply fails the lookup or the range
 * check that follows. `unique` is echoed back verbatim: a bigint in the codecs,
 * and two 32-bit halves on the server's path (RequestHeader, putOutHeader).
 */

export const FUSE_KERNEL_VERSION = 7;
/** The minor version we implement; the guest's lower minor wins in INIT. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Older guests lack fields we rely on (entry_out/attr_out full sizes from 7.9, 64-bit fh in open_out). */
export const FUSE_MIN_MINOR_VERSION = 12;
export const FUSE_ROOT_ID = 1;
/** Names longer than this are rejected with ENAMETOOLONG (NAME_MAX of the guest). */
export const FUSE_NAME_MAX = 255;

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52,
  COPY_FILE_RANGE_64: 53,
} as const;
export type OpcodeName = keyof typeof Opcode;

export const OPCODE_NAMES: ReadonlyMap<number, OpcodeName> = new Map(
  (Object.keys(Opcode) as OpcodeName[]).map((k) => [Opcode[k], k]),
);

/** INIT flags (fuse_init_in.flags / fuse_init_out.flags); bits 32.. travel in flags2. */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  FILE_OPS: 1 << 2,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8,
  SPLICE_READ: 1 << 9,
  FLOCK_LOCKS: 1 << 10,
  HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
  INIT_RESERVED: 2 ** 31,
} as const;

/** INIT flags2 bits: the ABI's bits 32.. shifted down by 32. */
export const InitFlag2 = {
  SECURITY_CTX: 1 << 0,
  HAS_INODE_DAX: 1 << 1,
  CREATE_SUPP_GROUP: 1 << 2,
  HAS_EXPIRE_ONLY: 1 << 3,
  DIRECT_IO_ALLOW_MMAP: 1 << 4,
  PASSTHROUGH: 1 << 5,
  NO_EXPORT_SUPPORT: 1 << 6,
  HAS_RESEND: 1 << 7,
} as const;

/** fuse_open_out.open_flags */
export const FopenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
} as const;

/** fuse_getattr_in.getattr_flags */
export const FUSE_GETATTR_FH = 1 << 0;
/** fuse_setupmapping_in.flags */
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1n << 0n;
export const FUSE_SETUPMAPPING_FLAG_READ = 1n << 1n;

// ---- 64-bit helpers ---------------------------------------------------------

const TWO_32 = 4294967296;
/** Largest high word of a u64 that still fits in a safe integer (2^53 = 2^21 * 2^32). */
const SAFE_HI_LIMIT = 0x200000;

/*
 * Little-endian fields by hand. Buffer's readUInt32LE/writeUInt32LE validate the
 * value and offset on every call and are not inlined into the codecs: a 128-byte
 * fuse_entry_out took 32 such calls, about 0.3 us of a LOOKUP's 2 us. These check
 * the bounds once per field and compile to plain byte loads and stores. A typed
 * array ignores an out-of-range store silently, hence the check.
 */
function outOfBounds(b: Buffer, off: number, n: number): RangeError {
  return new RangeError(`field of ${n} bytes at offset ${off} is outside a buffer of ${b.length}`);
}

export function getU16(b: Buffer, off: number): number {
  if (!(off >= 0 && off + 2 <= b.length)) throw outOfBounds(b, off, 2);
  return b[off] | (b[off + 1] << 8);
}

export function getU32(b: Buffer, off: number): number {
  if (!(off >= 0 && off + 4 <= b.length)) throw outOfBounds(b, off, 4);
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16)) + b[off + 3] * 0x1000000;
}

export function getI32(b: Buffer, off: number): number {
  if (!(off >= 0 && off + 4 <= b.length)) throw outOfBounds(b, off, 4);
  return b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24);
}

export function putU16(b: Buffer, off: number, v: number): void {
  if (!(off >= 0 && off + 2 <= b.length)) throw outOfBounds(b, off, 2);
  b[off] = v;
  b[off + 1] = v >>> 8;
}

/** Stores the low 32 bits of v: an int32 (fuse_out_header.error) comes out as its two's complement. */
export function putU32(b: Buffer, off: number, v: number): void {
  if (!(off >= 0 && off + 4 <= b.length)) throw outOfBounds(b, off, 4);
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

/** A u64 as a number, or Infinity when it does not fit in 53 bits. */
export function readU64(b: Buffer, off: number): number {
  const lo = getU32(b, off);
  const hi = getU32(b, off + 4);
  return hi < SAFE_HI_LIMIT ? hi * TWO_32 + lo : Infinity;
}

/** Writes a non-negative safe integer as u64 (callers pass our own values only). */
export function writeU64(b: Buffer, off: number, v: number): void {
  if (!(off >= 0 && off + 8 <= b.length)) throw outOfBounds(b, off, 8); // before any byte is written
  // Most values (sizes, inode numbers, times) fit 32 bits: no division on the hot path.
  const small = v >>> 0 === v;
  const lo = small ? v : v % TWO_32 >>> 0;
  const hi = small ? 0 : Math.floor(v / TWO_32) >>> 0;
  b[off] = lo;
  b[off + 1] = lo >>> 8;
  b[off + 2] = lo >>> 16;
  b[off + 3] = lo >>> 24;
  b[off + 4] = hi;
  b[off + 5] = hi >>> 8;
  b[off + 6] = hi >>> 16;
  b[off + 7] = hi >>> 24;
}

export interface Codec<T> {
  /** sizeof(struct) in bytes. */
  readonly SIZE: number;
  decode(b: Buffer, off: number): T;
  /** Writes exactly SIZE bytes at off; returns SIZE. */
  encode(v: T, b: Buffer, off: number): number;
}

/** Fills [off, off+n) with zeros (reserved and padding fields). */
function zero(b: Buffer, off: number, n: number): void {
  b.fill(0, off, off + n);
}

// ---- headers -----------------------------------------------------------------

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  totalExtlen: number;
}

/*
 * struct fuse_in_header {        // 40 bytes
 *   uint32_t len;                //  0  whole request, this header included
 *   uint32_t opcode;             //  4
 *   uint64_t unique;             //  8
 *   uint64_t nodeid;             // 16
 *   uint32_t uid;                // 24
 *   uint32_t gid;                // 28
 *   uint32_t pid;                // 32
 *   uint16_t total_extlen;       // 36  length of extensions in 8-byte units (7.38)
 *   uint16_t padding;            // 38
 * };
 */
export const InHeader: Codec<InHeader> = {
  SIZE: 40,
  decode: (b, o) => ({
    len: getU32(b, o),
    opcode: getU32(b, o + 4),
    unique: b.readBigUInt64LE(o + 8),
    nodeid: readU64(b, o + 16),
    uid: getU32(b, o + 24),
    gid: getU32(b, o + 28),
    pid: getU32(b, o + 32),
    totalExtlen: getU16(b, o + 36),
  }),
  encode: (v, b, o) => {
    putU32(b, o, v.len);
    putU32(b, o + 4, v.opcode);
    b.writeBigUInt64LE(v.unique, o + 8);
    writeU64(b, o + 16, v.nodeid);
    putU32(b, o + 24, v.uid);
    putU32(b, o + 28, v.gid);
    putU32(b, o + 32, v.pid);
    putU16(b, o + 36, v.totalExtlen);
    putU16(b, o + 38, 0);
    return 40;
  },
};

/**
 * fuse_in_header as the server reads it: the same bytes as InHeader, with `unique`
 * as its two le32 halves, which putOutHeader echoes back. Reading and writing it
 * as a bigint allocated and converted on every request, about 2% of a LOOKUP.
 */
export interface RequestHeader extends Omit<InHeader, 'unique'> {
  uniqueLo: number;
  uniqueHi: number;
}

export const RequestHeader: Codec<RequestHeader> = {
  SIZE: 40,
  decode: (b, o) => ({
    len: getU32(b, o),
    opcode: getU32(b, o + 4),
    uniqueLo: getU32(b, o + 8),
    uniqueHi: getU32(b, o + 12),
    nodeid: readU64(b, o + 16),
    uid: getU32(b, o + 24),
    gid: getU32(b, o + 28),
    pid: getU32(b, o + 32),
    totalExtlen: getU16(b, o + 36),
  }),
  encode: (v, b, o) => {
    const unique = BigInt(v.uniqueHi) * 2n ** 32n + BigInt(v.uniqueLo);
    return InHeader.encode({ len: v.len, opcode: v.opcode, unique, nodeid: v.nodeid, uid: v.uid, gid: v.gid, pid: v.pid, totalExtlen: v.totalExtlen }, b, o);
  },
};

/** Writes fuse_out_header with the request's unique given as RequestHeader holds it. */
export function putOutHeader(b: Buffer, o: number, len: number, error: number, uniqueLo: number, uniqueHi: number): void {
  if (!(o >= 0 && o + 16 <= b.length)) throw outOfBounds(b, o, 16); // before any field is written
  putU32(b, o, len);
  putU32(b, o + 4, error);
  putU32(b, o + 8, uniqueLo);
  putU32(b, o + 12, uniqueHi);
}

export interface OutHeader {
  len: number;
  /** 0 or a negated errno. */
  error: number;
  unique: bigint;
}

/*
 * struct fuse_out_header {       // 16 bytes
 *   uint32_t len;                //  0  whole reply, this header included
 *   int32_t  error;              //  4  0 or -errno
 *   uint64_t unique;             //  8  copied from the request
 * };
 */
export const OutHeader: Codec<OutHeader> = {
  SIZE: 16,
  decode: (b, o) => ({ len: getU32(b, o), error: getI32(b, o + 4), unique: b.readBigUInt64LE(o + 8) }),
  encode: (v, b, o) => {
    putU32(b, o, v.len);
    putU32(b, o + 4, v.error);
    b.writeBigUInt64LE(v.unique, o + 8);
    return 16;
  },
};

// ---- attributes and entries -----------------------------------------------------

export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  flags: number;
}

/*
 * struct fuse_attr {             // 88 bytes
 *   uint64_t ino;                //  0
 *   uint64_t size;               //  8
 *   uint64_t blocks;             // 16  512-byte units
 *   uint64_t atime;              // 24
 *   uint64_t mtime;              // 32
 *   uint64_t ctime;              // 40
 *   uint32_t atimensec;          // 48
 *   uint32_t mtimensec;          // 52
 *   uint32_t ctimensec;          // 56
 *   uint32_t mode;               // 60
 *   uint32_t nlink;              // 64
 *   uint32_t uid;                // 68
 *   uint32_t gid;                // 72
 *   uint32_t rdev;               // 76
 *   uint32_t blksize;            // 80
 *   uint32_t flags;              // 84  FUSE_ATTR_SUBMOUNT, FUSE_ATTR_DAX
 * };
 */
export const Attr: Codec<Attr> = {
  SIZE: 88,
  decode: (b, o) => ({
    ino: readU64(b, o),
    size: readU64(b, o + 8),
    blocks: readU64(b, o + 16),
    atime: readU64(b, o + 24),
    mtime: readU64(b, o + 32),
    ctime: readU64(b, o + 40),
    atimensec: getU32(b, o + 48),
    mtimensec: getU32(b, o + 52),
    ctimensec: getU32(b, o + 56),
    mode: getU32(b, o + 60),
    nlink: getU32(b, o + 64),
    uid: getU32(b, o + 68),
    gid: getU32(b, o + 72),
    rdev: getU32(b, o + 76),
    blksize: getU32(b, o + 80),
    flags: getU32(b, o + 84),
  }),
  encode: (v, b, o) => {
    writeU64(b, o, v.ino);
    writeU64(b, o + 8, v.size);
    writeU64(b, o + 16, v.blocks);
    writeU64(b, o + 24, v.atime);
    writeU64(b, o + 32, v.mtime);
    writeU64(b, o + 40, v.ctime);
    putU32(b, o + 48, v.atimensec);
    putU32(b, o + 52, v.mtimensec);
    putU32(b, o + 56, v.ctimensec);
    putU32(b, o + 60, v.mode);
    putU32(b, o + 64, v.nlink);
    putU32(b, o + 68, v.uid);
    putU32(b, o + 72, v.gid);
    putU32(b, o + 76, v.rdev);
    putU32(b, o + 80, v.blksize);
    putU32(b, o + 84, v.flags);
    return 88;
  },
};

export interface EntryOut {
  nodeid: number;
  generation: number;
  entryValid: number;
  attrValid: number;
  entryValidNsec: number;
  attrValidNsec: number;
  attr: Attr;
}

/*
 * struct fuse_entry_out {        // 128 bytes
 *   uint64_t nodeid;             //  0  0 = negative entry, cached for entry_valid
 *   uint64_t generation;         //  8  nodeid:generation unique for the fs's lifetime
 *   uint64_t entry_valid;        // 16  seconds
 *   uint64_t attr_valid;         // 24  seconds
 *   uint32_t entry_valid_nsec;   // 32
 *   uint32_t attr_valid_nsec;    // 36
 *   struct fuse_attr attr;       // 40
 * };
 */
export const EntryOut: Codec<EntryOut> = {
  SIZE: 128,
  decode: (b, o) => ({
    nodeid: readU64(b, o),
    generation: readU64(b, o + 8),
    entryValid: readU64(b, o + 16),
    attrValid: readU64(b, o + 24),
    entryValidNsec: getU32(b, o + 32),
    attrValidNsec: getU32(b, o + 36),
    attr: Attr.decode(b, o + 40),
  }),
  encode: (v, b, o) => {
    writeU64(b, o, v.nodeid);
    writeU64(b, o + 8, v.generation);
    writeU64(b, o + 16, v.entryValid);
    writeU64(b, o + 24, v.attrValid);
    putU32(b, o + 32, v.entryValidNsec);
    putU32(b, o + 36, v.attrValidNsec);
    Attr.encode(v.attr, b, o + 40);
    return 128;
  },
};

export interface AttrOut {
  attrValid: number;
  attrValidNsec: number;
  attr: Attr;
}

/*
 * struct fuse_attr_out {         // 104 bytes
 *   uint64_t attr_valid;         //  0  seconds
 *   uint32_t attr_valid_nsec;    //  8
 *   uint32_t dummy;              // 12
 *   struct fuse_attr attr;       // 16
 * };
 */
export const AttrOut: Codec<AttrOut> = {
  SIZE: 104,
  decode: (b, o) => ({ attrValid: readU64(b, o), attrValidNsec: getU32(b, o + 8), attr: Attr.decode(b, o + 16) }),
  encode: (v, b, o) => {
    writeU64(b, o, v.attrValid);
    putU32(b, o + 8, v.attrValidNsec);
    putU32(b, o + 12, 0);
    Attr.encode(v.attr, b, o + 16);
    return 104;
  },
};

// ---- INIT --------------------------------------------------------------------------

export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  /** Only meaningful when flags has INIT_EXT; 0 in the 16-byte pre-7.36 form. */
  flags2: number;
}

/*
 * struct fuse_init_in {          // 64 bytes (16 before 7.36)
 *   uint32_t major;              //  0
 *   uint32_t minor;              //  4
 *   uint32_t max_readahead;      //  8
 *   uint32_t flags;              // 12
 *   uint32_t flags2;             // 16  (7.36) bits 32..63 of the flags
 *   uint32_t unused[11];         // 20
 * };
 */
export const InitIn: Codec<InitIn> = {
  SIZE: 64,
  decode: (b, o) => ({
    major: getU32(b, o),
    minor: getU32(b, o + 4),
    maxReadahead: getU32(b, o + 8),
    flags: getU32(b, o + 12),
    flags2: getU32(b, o + 16),
  }),
  encode: (v, b, o) => {
    putU32(b, o, v.major);
    putU32(b, o + 4, v.minor);
    putU32(b, o + 8, v.maxReadahead);
    putU32(b, o + 12, v.flags >>> 0);
    putU32(b, o + 16, v.flags2 >>> 0);
    zero(b, o + 20, 44);
    return 64;
  },
};
/** The pre-7.36 fuse_init_in: major, minor, max_readahead, flags. */
export const INIT_IN_COMPAT_SIZE = 16;

export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
  mapAlignment: number;
  flags2: number;
}

/*
 * struct fuse_init_out {         // 64 bytes (24 before 7.23, 8 before 7.5)
 *   uint32_t major;              //  0
 *   uint32_t minor;              //  4
 *   uint32_t max_readahead;      //  8
 *   uint32_t flags;              // 12
 *   uint16_t max_background;     // 16
 *   uint16_t congestion_threshold; // 18
 *   uint32_t max_write;          // 20
 *   uint32_t time_gran;          // 24
 *   uint16_t max_pages;          // 28
 *   uint16_t map_alignment;      // 30
 *   uint32_t flags2;             // 32
 *   uint32_t unused[7];          // 36  (7.40 puts max_stack_depth and request_timeout here)
 * };
 */
export const InitOut: Codec<InitOut> = {
  SIZE: 64,
  decode: (b, o) => ({
    major: getU32(b, o),
    minor: getU32(b, o + 4),
    maxReadahead: getU32(b, o + 8),
    flags: getU32(b, o + 12),
    maxBackground: getU16(b, o + 16),
    congestionThreshold: getU16(b, o + 18),
    maxWrite: getU32(b, o + 20),
    timeGran: getU32(b, o + 24),
    maxPages: getU16(b, o + 28),
    mapAlignment: getU16(b, o + 30),
    flags2: getU32(b, o + 32),
  }),
  encode: (v, b, o) => {
    putU32(b, o, v.major);
    putU32(b, o + 4, v.minor);
    putU32(b, o + 8, v.maxReadahead);
    putU32(b, o + 12, v.flags >>> 0);
    putU16(b, o + 16, v.maxBackground);
    putU16(b, o + 18, v.congestionThreshold);
    putU32(b, o + 20, v.maxWrite);
    putU32(b, o + 24, v.timeGran);
    putU16(b, o + 28, v.maxPages);
    putU16(b, o + 30, v.mapAlignment);
    putU32(b, o + 32, v.flags2 >>> 0);
    zero(b, o + 36, 28);
    return 64;
  },
};
/** FUSE_COMPAT_22_INIT_OUT_SIZE: the reply size a guest below 7.23 expects. */
export const INIT_OUT_COMPAT_22_SIZE = 24;

// ---- small request structs -----------------------------------------------------

/*
 * struct fuse_forget_in {        // 8 bytes
 *   uint64_t nlookup;            //  0
 * };
 */
export const ForgetIn: Codec<{ nlookup: number }> = {
  SIZE: 8,
  decode: (b, o) => ({ nlookup: readU64(b, o) }),
  encode: (v, b, o) => (writeU64(b, o, v.nlookup), 8),
};

/*
 * struct fuse_batch_forget_in {  // 8 bytes, followed by count fuse_forget_one
 *   uint32_t count;              //  0
 *   uint32_t dummy;              //  4
 * };
 */
export const BatchForgetIn: Codec<{ count: number }> = {
  SIZE: 8,
  decode: (b, o) => ({ count: getU32(b, o) }),
  encode: (v, b, o) => (putU32(b, o, v.count), putU32(b, o + 4, 0), 8),
};

export interface ForgetOne {
  nodeid: number;
  nlookup: number;
}
/*
 * struct fuse_forget_one {       // 16 bytes
 *   uint64_t nodeid;             //  0
 *   uint64_t nlookup;            //  8
 * };
 */
export const ForgetOne: Codec<ForgetOne> = {
  SIZE: 16,
  decode: (b, o) => ({ nodeid: readU64(b, o), nlookup: readU64(b, o + 8) }),
  encode: (v, b, o) => (writeU64(b, o, v.nodeid), writeU64(b, o + 8, v.nlookup), 16),
};

export interface GetattrIn {
  getattrFlags: number;
  fh: number;
}
/*
 * struct fuse_getattr_in {       // 16 bytes
 *   uint32_t getattr_flags;      //  0  FUSE_GETATTR_FH
 *   uint32_t dummy;              //  4
 *   uint64_t fh;                 //  8
 * };
 */
export const GetattrIn: Codec<GetattrIn> = {
  SIZE: 16,
  decode: (b, o) => ({ getattrFlags: getU32(b, o), fh: readU64(b, o + 8) }),
  encode: (v, b, o) => (putU32(b, o, v.getattrFlags), putU32(b, o + 4, 0), writeU64(b, o + 8, v.fh), 16),
};

export interface OpenIn {
  flags: number;
  openFlags: number;
}
/*
 * struct fuse_open_in {          // 8 bytes (OPEN and OPENDIR)
 *   uint32_t flags;              //  0  open(2) flags
 *   uint32_t open_flags;         //  4  FUSE_OPEN_KILL_SUIDGID
 * };
 */
export const OpenIn: Codec<OpenIn> = {
  SIZE: 8,
  decode: (b, o) => ({ flags: getU32(b, o), openFlags: getU32(b, o + 4) }),
  encode: (v, b, o) => (putU32(b, o, v.flags >>> 0), putU32(b, o + 4, v.openFlags), 8),
};

export interface OpenOut {
  fh: number;
  openFlags: number;
}
/*
 * struct fuse_open_out {         // 16 bytes
 *   uint64_t fh;                 //  0
 *   uint32_t open_flags;         //  8  FOPEN_*
 *   int32_t  backing_id;         // 12  (padding in 7.38)
 * };
 */
export const OpenOut: Codec<OpenOut> = {
  SIZE: 16,
  decode: (b, o) => ({ fh: readU64(b, o), openFlags: getU32(b, o + 8) }),
  encode: (v, b, o) => (writeU64(b, o, v.fh), putU32(b, o + 8, v.openFlags), putU32(b, o + 12, 0), 16),
};

export interface ReadIn {
  fh: number;
  offset: number;
  size: number;
  readFlags: number;
  lockOwner: bigint;
  flags: number;
}
/*
 * struct fuse_read_in {          // 40 bytes (READ, READDIR, READDIRPLUS)
 *   uint64_t fh;                 //  0
 *   uint64_t offset;             //  8  byte offset, or a directory cookie
 *   uint32_t size;               // 16  bytes wanted
 *   uint32_t read_flags;         // 20  FUSE_READ_LOCKOWNER
 *   uint64_t lock_owner;         // 24
 *   uint32_t flags;              // 32  open(2) flags of the file
 *   uint32_t padding;            // 36
 * };
 */
export const ReadIn: Codec<ReadIn> = {
  SIZE: 40,
  decode: (b, o) => ({
    fh: readU64(b, o),
    offset: readU64(b, o + 8),
    size: getU32(b, o + 16),
    readFlags: getU32(b, o + 20),
    lockOwner: b.readBigUInt64LE(o + 24),
    flags: getU32(b, o + 32),
  }),
  encode: (v, b, o) => {
    writeU64(b, o, v.fh);
    writeU64(b, o + 8, v.offset);
    putU32(b, o + 16, v.size);
    putU32(b, o + 20, v.readFlags);
    b.writeBigUInt64LE(v.lockOwner, o + 24);
    putU32(b, o + 32, v.flags >>> 0);
    putU32(b, o + 36, 0);
    return 40;
  },
};

export interface ReleaseIn {
  fh: number;
  flags: number;
  releaseFlags: number;
  lockOwner: bigint;
}
/*
 * struct fuse_release_in {       // 24 bytes (RELEASE, RELEASEDIR)
 *   uint64_t fh;                 //  0
 *   uint32_t flags;              //  8
 *   uint32_t release_flags;      // 12  FUSE_RELEASE_FLUSH, FUSE_RELEASE_FLOCK_UNLOCK
 *   uint64_t lock_owner;         // 16
 * };
 */
export const ReleaseIn: Codec<ReleaseIn> = {
  SIZE: 24,
  decode: (b, o) => ({
    fh: readU64(b, o),
    flags: getU32(b, o + 8),
    releaseFlags: getU32(b, o + 12),
    lockOwner: b.readBigUInt64LE(o + 16),
  }),
  encode: (v, b, o) => {
    writeU64(b, o, v.fh);
    putU32(b, o + 8, v.flags >>> 0);
    putU32(b, o + 12, v.releaseFlags);
    b.writeBigUInt64LE(v.lockOwner, o + 16);
    return 24;
  },
};

export interface FlushIn {
  fh: number;
  lockOwner: bigint;
}
/*
 * struct fuse_flush_in {         // 24 bytes
 *   uint64_t fh;                 //  0
 *   uint32_t unused;             //  8
 *   uint32_t padding;            // 12
 *   uint64_t lock_owner;         // 16
 * };
 */
export const FlushIn: Codec<FlushIn> = {
  SIZE: 24,
  decode: (b, o) => ({ fh: readU64(b, o), lockOwner: b.readBigUInt64LE(o + 16) }),
  encode: (v, b, o) => (writeU64(b, o, v.fh), zero(b, o + 8, 8), b.writeBigUInt64LE(v.lockOwner, o + 16), 24),
};

/*
 * struct fuse_access_in {        // 8 bytes
 *   uint32_t mask;               //  0  R_OK 4, W_OK 2, X_OK 1, F_OK 0
 *   uint32_t padding;            //  4
 * };
 */
export const AccessIn: Codec<{ mask: number }> = {
  SIZE: 8,
  decode: (b, o) => ({ mask: getU32(b, o) }),
  encode: (v, b, o) => (putU32(b, o, v.mask), putU32(b, o + 4, 0), 8),
};

/*
 * struct fuse_getxattr_in {      // 8 bytes (GETXATTR: then the name, NUL-terminated; LISTXATTR: alone)
 *   uint32_t size;               //  0  0 = "how big is it?"
 *   uint32_t padding;            //  4
 * };
 */
export const GetxattrIn: Codec<{ size: number }> = {
  SIZE: 8,
  decode: (b, o) => ({ size: getU32(b, o) }),
  encode: (v, b, o) => (putU32(b, o, v.size), putU32(b, o + 4, 0), 8),
};

/*
 * struct fuse_getxattr_out {     // 8 bytes
 *   uint32_t size;               //  0
 *   uint32_t padding;            //  4
 * };
 */
export const GetxattrOut: Codec<{ size: number }> = GetxattrIn;

export interface KStatfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}
/*
 * struct fuse_kstatfs {          // 80 bytes; struct fuse_statfs_out { struct fuse_kstatfs st; }
 *   uint64_t blocks;             //  0  in frsize units
 *   uint64_t bfree;              //  8
 *   uint64_t bavail;             // 16
 *   uint64_t files;              // 24
 *   uint64_t ffree;              // 32
 *   uint32_t bsize;              // 40
 *   uint32_t namelen;            // 44
 *   uint32_t frsize;             // 48
 *   uint32_t padding;            // 52
 *   uint32_t spare[6];           // 56
 * };
 */
export const StatfsOut: Codec<KStatfs> = {
  SIZE: 80,
  decode: (b, o) => ({
    blocks: readU64(b, o),
    bfree: readU64(b, o + 8),
    bavail: readU64(b, o + 16),
    files: readU64(b, o + 24),
    ffree: readU64(b, o + 32),
    bsize: getU32(b, o + 40),
    namelen: getU32(b, o + 44),
    frsize: getU32(b, o + 48),
  }),
  encode: (v, b, o) => {
    writeU64(b, o, v.blocks);
    writeU64(b, o + 8, v.bfree);
    writeU64(b, o + 16, v.bavail);
    writeU64(b, o + 24, v.files);
    writeU64(b, o + 32, v.ffree);
    putU32(b, o + 40, v.bsize);
    putU32(b, o + 44, v.namelen);
    putU32(b, o + 48, v.frsize);
    zero(b, o + 52, 28);
    return 80;
  },
};

export interface LseekIn {
  fh: number;
  offset: number;
  whence: number;
}
/*
 * struct fuse_lseek_in {         // 24 bytes
 *   uint64_t fh;                 //  0
 *   uint64_t offset;             //  8
 *   uint32_t whence;             // 16  SEEK_DATA 3 / SEEK_HOLE 4 (the kernel handles the rest)
 *   uint32_t padding;            // 20
 * };
 */
export const LseekIn: Codec<LseekIn> = {
  SIZE: 24,
  decode: (b, o) => ({ fh: readU64(b, o), offset: readU64(b, o + 8), whence: getU32(b, o + 16) }),
  encode: (v, b, o) => (writeU64(b, o, v.fh), writeU64(b, o + 8, v.offset), putU32(b, o + 16, v.whence), putU32(b, o + 20, 0), 24),
};

/*
 * struct fuse_lseek_out {        // 8 bytes
 *   uint64_t offset;             //  0
 * };
 */
export const LseekOut: Codec<{ offset: number }> = {
  SIZE: 8,
  decode: (b, o) => ({ offset: readU64(b, o) }),
  encode: (v, b, o) => (writeU64(b, o, v.offset), 8),
};

/*
 * struct fuse_interrupt_in {     // 8 bytes
 *   uint64_t unique;             //  0  the request to interrupt
 * };
 */
export const InterruptIn: Codec<{ unique: bigint }> = {
  SIZE: 8,
  decode: (b, o) => ({ unique: b.readBigUInt64LE(o) }),
  encode: (v, b, o) => (b.writeBigUInt64LE(v.unique, o), 8),
};

/*
 * struct fuse_syncfs_in {        // 8 bytes
 *   uint64_t padding;            //  0
 * };
 */
export const SyncfsIn: Codec<Record<string, never>> = {
  SIZE: 8,
  decode: () => ({}),
  encode: (_v, b, o) => (zero(b, o, 8), 8),
};

export interface SetupMappingIn {
  fh: bigint;
  foffset: bigint;
  len: bigint;
  flags: bigint;
  moffset: bigint;
}
/*
 * struct fuse_setupmapping_in {  // 40 bytes
 *   uint64_t fh;                 //  0  an open handle, or -1: resolve by nodeid
 *   uint64_t foffset;            //  8  offset in the file
 *   uint64_t len;                // 16
 *   uint64_t flags;              // 24  FUSE_SETUPMAPPING_FLAG_WRITE 1, _READ 2
 *   uint64_t moffset;            // 32  offset in the DAX window
 * };
 * Exact bigints: these go to the VMM's window bookkeeping unchanged.
 */
export const SetupMappingIn: Codec<SetupMappingIn> = {
  SIZE: 40,
  decode: (b, o) => ({
    fh: b.readBigUInt64LE(o),
    foffset: b.readBigUInt64LE(o + 8),
    len: b.readBigUInt64LE(o + 16),
    flags: b.readBigUInt64LE(o + 24),
    moffset: b.readBigUInt64LE(o + 32),
  }),
  encode: (v, b, o) => {
    b.writeBigUInt64LE(v.fh, o);
    b.writeBigUInt64LE(v.foffset, o + 8);
    b.writeBigUInt64LE(v.len, o + 16);
    b.writeBigUInt64LE(v.flags, o + 24);
    b.writeBigUInt64LE(v.moffset, o + 32);
    return 40;
  },
};

/*
 * struct fuse_removemapping_in { // 4 bytes, followed directly (unaligned) by count fuse_removemapping_one
 *   uint32_t count;              //  0
 * };
 */
export const RemoveMappingIn: Codec<{ count: number }> = {
  SIZE: 4,
  decode: (b, o) => ({ count: getU32(b, o) }),
  encode: (v, b, o) => (putU32(b, o, v.count), 4),
};

/*
 * struct fuse_removemapping_one { // 16 bytes
 *   uint64_t moffset;            //  0
 *   uint64_t len;                //  8
 * };
 */
export const RemoveMappingOne: Codec<{ moffset: bigint; len: bigint }> = {
  SIZE: 16,
  decode: (b, o) => ({ moffset: b.readBigUInt64LE(o), len: b.readBigUInt64LE(o + 8) }),
  encode: (v, b, o) => (b.writeBigUInt64LE(v.moffset, o), b.writeBigUInt64LE(v.len, o + 8), 16),
};

// ---- directory entries ----------------------------------------------------------

export interface Dirent {
  ino: number;
  /** Cookie of the next entry: READDIR continues at this offset. */
  off: number;
  namelen: number;
  /** DT_* (mode >> 12). */
  type: number;
}

/*
 * struct fuse_dirent {           // 24 bytes, then name[namelen], padded to 8 (FUSE_DIRENT_ALIGN)
 *   uint64_t ino;                //  0
 *   uint64_t off;                //  8
 *   uint32_t namelen;            // 16
 *   uint32_t type;               // 20
 *   char name[];                 // 24
 * };
 * struct fuse_direntplus {       // 152 bytes, then name, padded to 8
 *   struct fuse_entry_out entry_out; //   0
 *   struct fuse_dirent dirent;   // 128
 * };
 */
export const Dirent: Codec<Dirent> = {
  SIZE: 24,
  decode: (b, o) => ({ ino: readU64(b, o), off: readU64(b, o + 8), namelen: getU32(b, o + 16), type: getU32(b, o + 20) }),
  encode: (v, b, o) => (writeU64(b, o, v.ino), writeU64(b, o + 8, v.off), putU32(b, o + 16, v.namelen), putU32(b, o + 20, v.type), 24),
};
export const DIRENTPLUS_NAME_OFFSET = EntryOut.SIZE + Dirent.SIZE;

/** FUSE_DIRENT_ALIGN: records are padded to 8 bytes. */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}
export function direntSize(namelen: number): number {
  return direntAlign(Dirent.SIZE + namelen);
}
export function direntplusSize(namelen: number): number {
  return direntAlign(DIRENTPLUS_NAME_OFFSET + namelen);
}
