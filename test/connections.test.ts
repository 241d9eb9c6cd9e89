// Idle connections cost a file descriptor each. One that never finishes its TLS handshake
// (proxy mode: never sends a request) is closed after TLS_HANDSHAKE_TIMEOUT, and one
// address holds at most MAX_CONNECTIONS_PER_ADDRESS, so it cannot starve other clients.
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';

import { Agent, fetch } from 'undici';

import { addClient, createWorkspace, eventually, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';

let workspace: Workspace;
let server: RunningServer | undefined;
let secret: string;
const sockets: (Socket | TLSSocket)[] = [];

interface Bare {
  socket: Socket;
  /** Set once the server closed (or reset) the connection. */
  closed: boolean;
}

/** A TCP connection that sends nothing, from a chosen loopback address. */
async function bareConnection(port: number, localAddress = '127.0.0.1'): Promise<Bare> {
  const socket = connect({ host: '127.0.0.1', port, localAddress });
  sockets.push(socket);
  const bare: Bare = { socket, closed: false };
  socket.on('error', () => {});
  socket.on('close', () => {
    bare.closed = true;
  });
  await new Promise<void>((done, fail) => {
    socket.once('connect', () => done());
    socket.once('error', fail);
  });
  return bare;
}

/** A Basic token request over TLS from a chosen loopback address. */
async function tokenFrom(localAddress: string): Promise<number> {
  const agent = new Agent({ localAddress, connect: { ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8') } });
  try {
    const res = await fetch(`${server!.issuer}/token`, {
      method: 'POST',
      dispatcher: agent,
      headers: { authorization: `Basic ${Buffer.from(`svc-conn:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials',
    });
    await res.arrayBuffer();
    return res.status;
  } finally {
    await agent.close().catch(() => {});
  }
}

beforeAll(async () => {
  workspace = await createWorkspace();
  secret = (await addClient(workspace, 'svc-conn', ['--auth', 'client_secret_basic', '--audience', API])).client_secret!;
});

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await server?.stop();
  server = undefined;
});

afterAll(async () => {
  await workspace?.remove();
});

test('direct mode: a connection that never sends a ClientHello is closed after TLS_HANDSHAKE_TIMEOUT', async () => {
  server = await startServer(workspace, { TLS_HANDSHAKE_TIMEOUT: '1' });
  const idle = await Promise.all([1, 2, 3, 4, 5].map(() => bareConnection(server!.port)));
  // Node's default would hold them for 120 s.
  await eventually(async () => idle.every((c) => c.closed), 20_000, 'every idle connection closed by the server');
  expect(await tokenFrom('127.0.0.1')).toBe(200);
});

test('direct mode: a finished handshake followed by silence is closed too', async () => {
  server = await startServer(workspace, { TLS_HANDSHAKE_TIMEOUT: '1' });
  const socket = tlsConnect({ host: '127.0.0.1', port: server.port, servername: 'localhost', ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8') });
  sockets.push(socket);
  let closed = false;
  socket.on('error', () => {});
  socket.on('close', () => {
    closed = true;
  });
  await new Promise<void>((done, fail) => {
    socket.once('secureConnect', () => done());
    socket.once('error', fail);
  });
  await eventually(async () => closed, 20_000, 'the silent TLS connection closed by the server');
});

test('proxy mode: a connection that never sends a request is closed after TLS_HANDSHAKE_TIMEOUT, also from a trusted proxy', async () => {
  server = await startServer(workspace, { TLS_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1', TLS_HANDSHAKE_TIMEOUT: '1' });
  const idle = await Promise.all([1, 2, 3, 4, 5].map(() => bareConnection(server!.port)));
  await eventually(async () => idle.every((c) => c.closed), 20_000, 'every idle connection closed by the server');
});

test('one address past MAX_CONNECTIONS_PER_ADDRESS is refused; another address still gets a token', async () => {
  const max = 20;
  // One process: each worker counts the connections it was handed (TEST_WORKERS would split them).
  server = await startServer(workspace, { MAX_CONNECTIONS_PER_ADDRESS: String(max), TLS_HANDSHAKE_TIMEOUT: '300', WORKERS: '1' });
  const hog = '127.0.0.5';
  const held: Bare[] = [];
  for (let i = 0; i < max + 1; i += 1) held.push(await bareConnection(server.port, hog));
  // The one accepted last (whichever it is) is closed at once; the others stay open.
  await eventually(async () => held.filter((c) => c.closed).length === 1, 20_000, 'one connection past the cap closed');
  await expect(tokenFrom(hog)).rejects.toThrow();
  expect(held.filter((c) => c.closed)).toHaveLength(1);
  expect(await tokenFrom('127.0.0.2')).toBe(200);
  // A freed place is a place again.
  held.find((c) => !c.closed)!.socket.destroy();
  await eventually(async () => (await tokenFrom(hog).catch(() => 0)) === 200, 20_000, 'a token from the hog once it holds fewer');
});

test('HOST chooses the listening address', async () => {
  server = await startServer(workspace, { HOST: '127.0.0.2' });
  const [line] = await server.logLines((l) => l.msg === 'listening', 1);
  expect(line).toMatchObject({ host: '127.0.0.2' });
  const reach = (host: string) => new Promise<string>((done) => {
    const socket = connect({ host, port: server!.port });
    socket.once('connect', () => {
      socket.destroy();
      done('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? 'error'));
  });
  expect(await reach('127.0.0.2')).toBe('connected');
  expect(await reach('127.0.0.1')).toBe('ECONNREFUSED');
});
