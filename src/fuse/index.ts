/** The FUSE layer: ABI codecs, chain cursors, the FileSystem contract and the server. */
export * from './abi';
export { ChainReader, ChainWriter, totalLength } from './chain';
export { Errno, FsError, FuseDecodeError, FuseReplyOverflowError, InternalInvariantError, errnoOf } from './errno';
export { FileSystem, MUTATING_OPS, opensForWrite } from './filesystem';
export type { DirEntry, DirEntrySink, Entry, MutatingOp, Opened, RequestContext } from './filesystem';
export { FuseServer } from './server';
export type { CacheMode, DaxMapper, FuseLogger, FuseServerOptions } from './server';
