/**
 * A driver-side split ring and a device-side Virtqueue over the same memfd, no
 * socket in between: for unit tests of the chain walker and the queue.
 */
import * as native from '../../src/native';
import { GuestMemory } from '../../src/virtio/guest-memory';
import { Virtqueue } from '../../src/virtio/queue';
import { DriverQueue, GuestRam, type RegionLayout } from './frontend';
import { EchoHandler, RecordingLogger } from './backend-pair';

export const NEXT = 1;
export const WRITE = 2;
export const INDIRECT = 4;

export interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

export class RingFixture {
  readonly ram: GuestRam;
  readonly memory = new GuestMemory();
  readonly driver: DriverQueue;
  readonly queue: Virtqueue;
  readonly handler = new EchoHandler();
  readonly log = new RecordingLogger();
  notifications = 0;
  /** Times the queue reported that its last PENDING chain completed. */
  idle = 0;

  constructor(size = 16, layout: RegionLayout[] = [{ gpa: 0, size: 1 << 20 }]) {
    this.ram = new GuestRam(layout);
    for (const r of this.ram.regions) {
      this.memory.add({ guestPhysAddr: r.gpa, size: r.size, userAddr: r.userAddr, mmapOffset: r.fdOffset }, native.dup(this.ram.fd));
    }
    this.driver = new DriverQueue(this.ram, 1, size);
    this.queue = new Virtqueue({ index: 1, memory: this.memory, signals: { notify: () => this.notifications++, idle: () => this.idle++ }, logger: this.log });
    this.queue.setSize(size);
    this.queue.setAddresses({ desc: this.driver.desc, avail: this.driver.avail, used: this.driver.used }, 'guest');
    this.queue.resolve(true);
  }

  /** Places bytes in guest RAM and returns their GPA. */
  put(bytes: Buffer | string): number {
    const b = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
    const gpa = this.ram.alloc(b.length, 8);
    b.copy(this.ram.view(gpa, b.length));
    return gpa;
  }

  /** Writes descriptors into the ring's table at the given indices. */
  table(entries: [number, Desc][]): void {
    for (const [i, d] of entries) this.driver.writeDescriptor(this.driver.desc, i, d);
  }

  /** Writes an indirect table in guest RAM and returns its GPA. */
  indirectTable(descs: Desc[]): number {
    const gpa = this.ram.alloc(16 * descs.length, 16);
    descs.forEach((d, i) => this.driver.writeDescriptor(gpa, i, d));
    return gpa;
  }

  /** Makes heads available (one publish) and drains once. */
  offer(...heads: number[]): ReturnType<Virtqueue['drain']> {
    const old = this.driver.availIdx;
    for (const h of heads) this.driver.push(h);
    this.driver.publish(old);
    return this.queue.drain(this.handler);
  }

  close(): void {
    this.memory.close();
    this.ram.close();
  }
}
