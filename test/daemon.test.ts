/** The daemon's socket handling and connection lifetime, with a stand-in session. */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Connection, Daemon, openListener } from '../src/daemon';
import * as native from '../src/native';

const quiet = { info: () => undefined, warn: () => undefined };

class FakeSession extends EventEmitter implements Connection {
  closed = false;
  constructor(readonly fd: number) {
    super();
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.closeQuietly(this.fd);
    this.emit('close');
  }
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-daemon-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function setupError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect((e as { code?: string }).code).toBe('CFS_ERR_SOCKET_SETUP');
    return (e as Error).message;
  }
  throw new Error('expected a socket setup error');
}

function nextTick(ms = 20): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

describe('openListener', () => {
  test('a missing socket directory is named', () => {
    expect(setupError(() => openListener({ socketPath: path.join(dir, 'nope', 's.sock') }))).toMatch(/socket directory .*nope does not exist/);
  });

  test('a stale socket from a dead daemon is replaced; a live one is refused', () => {
    const sock = path.join(dir, 's.sock');
    const first = native.listenUnix(sock);
    expect(setupError(() => openListener({ socketPath: sock }))).toMatch(/in use by another running backend/);
    native.close(first); // the path stays behind, nobody listens
    const l = openListener({ socketPath: sock });
    expect(l.boundPath).toBe(sock);
    native.close(l.fd);
  });

  test('a path that is not a socket is not touched', () => {
    const file = path.join(dir, 'regular');
    fs.writeFileSync(file, 'keep me');
    expect(setupError(() => openListener({ socketPath: file }))).toMatch(/exists and is not a socket/);
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me');
  });

  test('--socket-group sets the group and mode 0660; an unknown group is named', () => {
    const sock = path.join(dir, 'g.sock');
    const l = openListener({ socketPath: sock, socketGroup: String(process.getgid!()) });
    expect(fs.statSync(sock).mode & 0o777).toBe(0o660);
    native.close(l.fd);
    fs.rmSync(sock);
    expect(setupError(() => openListener({ socketPath: sock, socketGroup: 'no-such-group-cfs' }))).toMatch(/no group named 'no-such-group-cfs'/);
    expect(fs.existsSync(sock)).toBe(false);
  });

  test('--fd adopts an inherited listening socket and refuses a non-socket', () => {
    const fd = native.listenUnix(path.join(dir, 'inh.sock'));
    expect(openListener({ fd }).fd).toBe(fd);
    native.close(fd);
    const file = fs.openSync(path.join(dir, 'f'), 'w');
    expect(setupError(() => openListener({ fd: file }))).toMatch(/is not a socket/);
    fs.closeSync(file);
  });
});

describe('Daemon', () => {
  function start(persist: boolean) {
    const sock = path.join(dir, 'd.sock');
    const sessions: FakeSession[] = [];
    const d = new Daemon(openListener({ socketPath: sock }), {
      persist,
      logger: quiet,
      startSession: (fd) => {
        const s = new FakeSession(fd);
        sessions.push(s);
        return s;
      },
    });
    const exited = new Promise<void>((r) => d.once('exit', r));
    d.start();
    return { d, sock, sessions, exited };
  }

  test('serves one frontend at a time and exits when it leaves', async () => {
    const { d, sock, sessions, exited } = start(false);
    const c1 = native.connectUnix(sock);
    await nextTick();
    expect(sessions).toHaveLength(1);
    const c2 = native.connectUnix(sock);
    await nextTick();
    expect(sessions).toHaveLength(1); // the second one was refused
    expect(native.recvmsg(c2, Buffer.alloc(1))?.bytes).toBe(0); // and sees end of stream
    sessions[0].close();
    await exited;
    expect(d.connected).toBe(false);
    expect(fs.existsSync(sock)).toBe(false); // the daemon removes what it bound
    native.close(c1);
    native.close(c2);
  });

  test('with persist, the next frontend is served after the first leaves', async () => {
    const { d, sock, sessions, exited } = start(true);
    const c1 = native.connectUnix(sock);
    await nextTick();
    sessions[0].close();
    await nextTick();
    const c2 = native.connectUnix(sock);
    await nextTick();
    expect(sessions).toHaveLength(2);
    expect(d.connected).toBe(true);
    d.stop();
    await exited;
    expect(sessions[1].closed).toBe(true);
    native.close(c1);
    native.close(c2);
  });
});
