/**
 * vhost-user wire constants (QEMU docs/interop/vhost-user.rst): request codes,
 * header flags, feature bits, and the per-request rules the codec enforces
 * (payload sizes, how many fds may ride along).
 */

/** Requests from the frontend to the backend ("front-end message types"). */
export const FrontendRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
  GET_SHMEM_CONFIG: 44,
} as const;

/** Requests from the backend to the frontend on the SET_BACKEND_REQ_FD channel. */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
} as const;

const REQUEST_NAMES = new Map<number, string>(Object.entries(FrontendRequest).map(([k, v]) => [v, k]));

/** The spec's name of a frontend request, for log lines. */
export function requestName(request: number): string {
  return REQUEST_NAMES.get(request) ?? `UNKNOWN(${request})`;
}

export const HEADER_SIZE = 12;
/** Header flags: bits 0-1 hold the protocol version, which must be 1. */
export const VERSION = 0x1;
export const VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/** Largest payload accepted; the biggest message we know (GET_CONFIG, 12 + 256) fits with room. */
export const MAX_PAYLOAD = 4096;
/** Memory regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS) and fds per message. */
export const MAX_MEM_TABLE_REGIONS = 8;
export const MAX_FDS = 8;
/** Slots reported by GET_MAX_MEM_SLOTS (QEMU 7.2's virtiofsd reports 32 as well). */
export const MAX_MEM_SLOTS = 32;

export const MEMORY_REGION_SIZE = 32;
export const VRING_STATE_SIZE = 8;
export const VRING_ADDR_SIZE = 40;
export const CONFIG_HEADER_SIZE = 12;
export const MAX_CONFIG_SIZE = 256;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 index, bit 8 "no fd" (polling). */
export const VRING_INDEX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;
/** SET_VRING_ADDR flags bit 0: log the used ring (needs LOG_ALL, which we do not offer). */
export const VRING_F_LOG = 0x1;

/** Virtio feature bits (VIRTIO 1.2 §6, plus vhost-user's bit 30). */
export const VirtioFeature = {
  NOTIFY_ON_EMPTY: 1n << 24n,
  LOG_ALL: 1n << 26n,
  INDIRECT_DESC: 1n << 28n,
  EVENT_IDX: 1n << 29n,
  PROTOCOL_FEATURES: 1n << 30n,
  VERSION_1: 1n << 32n,
} as const;

export const ProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  REPLY_ACK: 1n << 3n,
  BACKEND_REQ: 1n << 5n,
  CONFIG: 1n << 9n,
  BACKEND_SEND_FD: 1n << 10n,
  HOST_NOTIFIER: 1n << 11n,
  INFLIGHT_SHMFD: 1n << 12n,
  RESET_DEVICE: 1n << 13n,
  INBAND_NOTIFICATIONS: 1n << 14n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
  STATUS: 1n << 16n,
  DEVICE_STATE: 1n << 19n,
  SHMEM: 1n << 22n,
} as const;

/** What closurefs offers: exactly what the session implements. */
export const OFFERED_FEATURES =
  VirtioFeature.VERSION_1 | VirtioFeature.INDIRECT_DESC | VirtioFeature.EVENT_IDX | VirtioFeature.PROTOCOL_FEATURES;

export const OFFERED_PROTOCOL_FEATURES =
  ProtocolFeature.MQ |
  ProtocolFeature.REPLY_ACK |
  ProtocolFeature.CONFIGURE_MEM_SLOTS |
  ProtocolFeature.BACKEND_REQ |
  ProtocolFeature.BACKEND_SEND_FD |
  ProtocolFeature.RESET_DEVICE;

/** Allowed payload sizes: an exact size, or a check for the variable-length ones. */
type SizeRule = number | readonly number[] | ((size: number) => boolean);

const R = FrontendRequest;
const u64 = 8;
const memTableSize = (size: number): boolean =>
  size > 8 && (size - 8) % MEMORY_REGION_SIZE === 0 && (size - 8) / MEMORY_REGION_SIZE <= MAX_MEM_TABLE_REGIONS;
const configSize = (size: number): boolean => size >= CONFIG_HEADER_SIZE && size <= CONFIG_HEADER_SIZE + MAX_CONFIG_SIZE;

/** Payload sizes of every request the session understands; others only need to fit MAX_PAYLOAD. */
export const PAYLOAD_SIZES: ReadonlyMap<number, SizeRule> = new Map<number, SizeRule>([
  [R.GET_FEATURES, 0],
  [R.SET_FEATURES, u64],
  [R.SET_OWNER, 0],
  [R.RESET_OWNER, 0],
  [R.SET_MEM_TABLE, memTableSize],
  [R.SET_VRING_NUM, VRING_STATE_SIZE],
  [R.SET_VRING_ADDR, VRING_ADDR_SIZE],
  [R.SET_VRING_BASE, VRING_STATE_SIZE],
  [R.GET_VRING_BASE, VRING_STATE_SIZE],
  [R.SET_VRING_KICK, u64],
  [R.SET_VRING_CALL, u64],
  [R.SET_VRING_ERR, u64],
  [R.GET_PROTOCOL_FEATURES, 0],
  [R.SET_PROTOCOL_FEATURES, u64],
  [R.GET_QUEUE_NUM, 0],
  [R.SET_VRING_ENABLE, VRING_STATE_SIZE],
  // QEMU sends no payload; some frontends send a u64. Both carry one fd.
  [R.SET_BACKEND_REQ_FD, [0, u64]],
  [R.GET_CONFIG, configSize],
  [R.SET_CONFIG, configSize],
  [R.RESET_DEVICE, 0],
  [R.GET_MAX_MEM_SLOTS, 0],
  [R.ADD_MEM_REG, u64 + MEMORY_REGION_SIZE],
  [R.REM_MEM_REG, u64 + MEMORY_REGION_SIZE],
  [R.GET_SHMEM_CONFIG, 0],
]);

/** VhostUserShMemConfig: { le32 nregions; le32 padding; le64 memory_sizes[256]; } */
export const MAX_SHMEM_REGIONS = 256;
export const SHMEM_CONFIG_SIZE = 8 + 8 * MAX_SHMEM_REGIONS;

export function payloadSizeAllowed(request: number, size: number): boolean {
  if (size > MAX_PAYLOAD) return false;
  const rule = PAYLOAD_SIZES.get(request);
  if (rule === undefined) return true;
  if (typeof rule === 'number') return size === rule;
  if (typeof rule === 'function') return rule(size);
  return rule.includes(size);
}

/**
 * How many fds may arrive with each request: [min, max]. Anything not listed
 * carries none. SET_VRING_KICK/CALL/ERR carry one unless their payload has the
 * "no fd" bit (checked against the payload by the session). REM_MEM_REG: the
 * spec tolerates QEMU's old habit of sending the region's fd; it is ignored.
 */
export const ALLOWED_FDS: ReadonlyMap<number, readonly [number, number]> = new Map<number, readonly [number, number]>([
  [R.SET_MEM_TABLE, [1, MAX_MEM_TABLE_REGIONS]],
  [R.SET_LOG_BASE, [0, 1]],
  [R.SET_LOG_FD, [0, 1]],
  [R.SET_VRING_KICK, [0, 1]],
  [R.SET_VRING_CALL, [0, 1]],
  [R.SET_VRING_ERR, [0, 1]],
  [R.SET_BACKEND_REQ_FD, [1, 1]],
  [R.SET_INFLIGHT_FD, [0, 1]],
  [R.GPU_SET_SOCKET, [0, 1]],
  [R.ADD_MEM_REG, [1, 1]],
  [R.REM_MEM_REG, [0, 1]],
  [R.SET_DEVICE_STATE_FD, [0, 1]],
]);

export function fdCountAllowed(request: number, count: number): boolean {
  const [min, max] = ALLOWED_FDS.get(request) ?? [0, 0];
  return count >= min && count <= max;
}

/**
 * Requests whose reply is part of their definition (sent whether or not
 * NEED_REPLY is set). For every other request a reply is an ack, sent only
 * when REPLY_ACK was negotiated and the frontend set NEED_REPLY.
 */
export const REQUESTS_WITH_REPLY: ReadonlySet<number> = new Set<number>([
  R.GET_FEATURES,
  R.GET_PROTOCOL_FEATURES,
  R.GET_VRING_BASE,
  R.GET_QUEUE_NUM,
  R.GET_CONFIG,
  R.GET_MAX_MEM_SLOTS,
  R.GET_INFLIGHT_FD,
  R.GET_STATUS,
  R.GET_SHARED_OBJECT,
  R.SET_DEVICE_STATE_FD,
  R.CHECK_DEVICE_STATE,
  R.GET_SHMEM_CONFIG,
  R.POSTCOPY_ADVISE,
  R.CREATE_CRYPTO_SESSION,
]);
