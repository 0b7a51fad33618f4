/** Guest memory, split virtqueues and descriptor chains. */
export { GuestMemory, ADDRESS_LIMIT, DEFAULT_MAX_REGIONS } from './guest-memory';
export type { GuestMemoryRegion, GuestMemoryOptions, MemoryRegionDescriptor } from './guest-memory';
export { Virtqueue, MAX_QUEUE_SIZE, ringSizes, isValidQueueSize, needEvent } from './queue';
export type { AddressSpace, DrainResult, RingAddresses, VirtqueueOptions } from './queue';
export { walkChain, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, DESCRIPTOR_SIZE } from './chain';
export type { DescriptorChain } from './chain';
export * from './errors';
export type { Logger } from './logger';
