// The database goes away (a TCP proxy in front of PostgreSQL is closed) and comes back:
// /readyz turns unready, cached Basic clients keep getting tokens within the grace window,
// private_key_jwt fails closed with 503 + Retry-After, no request hangs, and everything
// recovers by itself. Needs a PostgreSQL server (TEST_DATABASE_URL); the embedded
// database lives inside the server process and cannot go away on its own.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

import { importPKCS8, SignJWT } from 'jose';

import { addClient, createWorkspace, eventually, freePort, sleep, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const STATED_TIMEOUT_MS = 3500;
const suite = process.env.TEST_DATABASE_URL ? describe : describe.skip;

/** A TCP proxy to PostgreSQL that the test can cut and restore. */
class DatabaseProxy {
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();
  readonly port: number;
  readonly target: { host: string; port: number };

  constructor(port: number, target: { host: string; port: number }) {
    this.port = port;
    this.target = target;
  }

  async open(): Promise<void> {
    this.#server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => { client.destroy(); upstream.destroy(); });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((done) => this.#server!.listen(this.port, '127.0.0.1', done));
  }

  async cut(): Promise<void> {
    const closed = new Promise<void>((done) => this.#server?.close(() => done()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}

suite('database outage', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let proxy: DatabaseProxy;
  let secret: string;
  let keyPem: string;

  beforeAll(async () => {
    workspace = await createWorkspace();
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--introspect', API])) as { client_secret: string });
    const keyFile = join(workspace.dir, 'svc-jwt.key');
    await addClient(workspace, 'svc-jwt', ['--auth', 'private_key_jwt', '--generate-key', keyFile, '--audience', API]);
    keyPem = readFileSync(keyFile, 'utf8');
    const direct = new URL(workspace.databaseUrl!);
    proxy = new DatabaseProxy(await freePort(), { host: direct.hostname, port: Number(direct.port || 5432) });
    await proxy.open();
    const proxied = new URL(direct);
    proxied.port = String(proxy.port);
    proxied.hostname = '127.0.0.1';
    server = await startServer(workspace, { DATABASE_URL: proxied.toString(), CLIENT_CACHE_SECONDS: '1', DB_OUTAGE_GRACE_SECONDS: '60' });
  });

  afterAll(async () => {
    await server?.stop();
    await proxy?.cut().catch(() => {});
    await workspace?.remove();
  });

  async function assertion(): Promise<string> {
    const key = await importPKCS8(keyPem, 'ES256');
    return new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setIssuer('svc-jwt').setSubject('svc-jwt')
      .setAudience(server.issuer).setJti(randomUUID()).setIssuedAt().setExpirationTime('60s').sign(key);
  }

  async function timed<T>(run: () => Promise<T>): Promise<T> {
    const started = Date.now();
    const result = await run();
    expect(Date.now() - started).toBeLessThan(STATED_TIMEOUT_MS);
    return result;
  }

  const basic = () => timed(() => server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] }));
  const jwtAuth = async () => {
    const value = await assertion();
    return timed(() => server.post('/token', {
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: value,
    }));
  };
  const ready = () => timed(() => server.fetch('/readyz'));

  test('before: ready, and both methods get tokens', async () => {
    expect((await ready()).status).toBe(200);
    expect((await jwtAuth()).status).toBe(200);
    // Every worker must have seen the client (each caches its own), so ask until each has.
    const workers = Number(process.env.TEST_WORKERS ?? 1);
    await eventually(async () => {
      const batch = await Promise.all(Array.from({ length: 8 }, () => basic()));
      expect(batch.map((r) => r.status)).toEqual(Array(8).fill(200));
      const pids = new Set(server.output().split('\n').filter((l) => l.includes('"event":"token.issued"') && l.includes('"client_id":"svc"')).map((l) => JSON.parse(l).pid));
      return pids.size >= workers;
    }, 20_000, 'every worker has issued a token to svc');
  });

  test('during: unready, cached Basic clients served, private_key_jwt 503 with Retry-After, nothing hangs', async () => {
    const token = (await basic()).body.access_token as string;
    await proxy.cut();
    const unready = await ready();
    expect(unready.status).toBe(503);
    expect(await unready.json()).toMatchObject({ status: 'unready', database: 'unreachable' });

    // Past CLIENT_CACHE_SECONDS the cached entry is stale: served only because of the outage grace.
    const deadline = Date.now() + 4000;
    while (Date.now() < deadline) {
      const res = await basic();
      expect(res.status).toBe(200);
      await sleep(300);
    }

    const refused = await jwtAuth();
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(refused.body).toMatchObject({ error: 'temporarily_unavailable' });

    const unknown = await timed(() => server.post('/token', { grant_type: 'client_credentials' }, { basic: ['never-seen', 'x'] }));
    expect(unknown.status).toBe(503);

    // Revocation state is unknown: introspection says so instead of guessing.
    const introspected = await timed(() => server.post('/token/introspection', { token }, { basic: ['svc', secret] }));
    expect(introspected.status).toBe(503);
    expect(introspected.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(server.process.exitCode).toBeNull();
  });

  test('after: everything recovers by itself', async () => {
    await proxy.open();
    const started = Date.now();
    for (;;) {
      if ((await ready()).status === 200) break;
      expect(Date.now() - started).toBeLessThan(15_000);
      await sleep(250);
    }
    // Each worker stops failing fast at its next probe (within a second or so).
    await eventually(async () => (await jwtAuth()).status === 200 && (await jwtAuth()).status === 200, 10_000, 'private_key_jwt again');
    expect((await basic()).status).toBe(200);
    expect(server.output()).not.toMatch(/"level":50.*"msg":"unhandled error"/);
  });
});
