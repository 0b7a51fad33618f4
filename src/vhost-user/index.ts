/** The vhost-user backend: what the daemon wiring needs. */
export { VhostUserSession, FS_CONFIG_SIZE, FS_TAG_SIZE } from './session';
export type { VhostUserDevice, VhostUserSessionOptions, SessionState } from './session';
export { BackendChannel, DEFAULT_BACKEND_TIMEOUT_MS } from './backend-channel';
export type { BackendChannelOptions } from './backend-channel';
export { VhostUserProtocolError, VhostUserRequestError, BackendChannelError } from './errors';
export { BackendRequest, FrontendRequest, ProtocolFeature, VirtioFeature, OFFERED_FEATURES, OFFERED_PROTOCOL_FEATURES } from './protocol';
export type { Logger } from '../virtio/logger';
