/** The store side: closure inputs, the closure view and its node/handle tables. */
export {
  ClosureInputError,
  LOGICAL_STORE_DIR,
  basenameProblem,
  chrootStoreOf,
  closureOf,
  loadClosure,
  parseClosureText,
  parsePathInfoJson,
  parseRegistration,
  parseStorePaths,
  readClosureFile,
  storePathBasename,
} from './closure-input';
export type { ClosureFormat, ClosureOfOptions, LoadClosureOptions, ParsedClosure, StorePathRef } from './closure-input';
export { ClosureView } from './view';
export type { ClosureStats, ClosureViewOptions } from './view';
export { HandleTable, Lru } from './handles';
export { NodeTable, ROOT_NODEID, identityOf } from './nodes';
export type { Node, NodeKind } from './nodes';
