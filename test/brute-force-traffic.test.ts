// The brute-force limits never refuse a correct client, under the traffic shapes correct
// clients have, with the default settings (AUTH_FAILURE_LIMIT 10, AUTH_FAILURE_ADDRESS_LIMIT
// 100): concurrent bursts from one address, steady load over two instances, many clients
// behind one address (a NAT), and `kill -9` of a process in the middle of a burst. And they
// still stop guesses: wrong secrets sent at once are evaluated at most up to the limit,
// and an attempt refused over the limit never raises the stored count.
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';

import pg from 'pg';

import { countStatuses } from './helpers/statuses.ts';
import { addClient, createWorkspace, eventually, freePort, sleep, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const LIMIT = 10;
const NAT_CLIENTS = 250;
const onPostgres = process.env.TEST_DATABASE_URL ? describe : describe.skip;

const agents: Agent[] = [];
const cleanup: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const agent of agents) agent.destroy();
  for (const step of cleanup.reverse()) await step();
});

/** A keep-alive HTTPS client on its own loopback source address (127.0.0.0/8 all reaches this machine). */
function clientAt(workspace: Workspace, localAddress: string, maxSockets = 64) {
  const agent = new Agent({ keepAlive: true, maxSockets, ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt')), servername: 'localhost' });
  agents.push(agent);
  return (server: RunningServer, clientId: string, secret: string) => new Promise<number>((done, fail) => {
    const body = 'grant_type=client_credentials';
    const req = request({
      host: '127.0.0.1', port: server.port, path: '/token', method: 'POST', agent, localAddress,
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'content-length': Buffer.byteLength(body),
        authorization: `Basic ${Buffer.from(`${clientId}:${secret}`).toString('base64')}`,
      },
    }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode!));
    });
    req.on('error', fail);
    // A connection handed to a worker killed at that moment may never be answered: a
    // client's own timeout ends it, as it would a real client's.
    req.setTimeout(15_000, () => req.destroy(new Error('no answer within 15 s')));
    req.end(body);
  });
}

/** Failures stored against an address (PostgreSQL); none on the embedded database. */
async function storedFor(workspace: Workspace, address: string): Promise<number[]> {
  if (!workspace.databaseUrl) return [];
  return (await storedFailures(workspace)).filter((r) => r.key.includes(address) && r.points > 0).map((r) => r.points);
}

/** Every row of auth_failures with its row version. */
async function storedRows(workspace: Workspace): Promise<string[]> {
  const db = new pg.Client({ connectionString: workspace.databaseUrl });
  await db.connect();
  try {
    return (await db.query<{ row: string }>("select key || ' ' || ctid::text || ' ' || points as row from auth_failures order by key")).rows.map((r) => r.row);
  } finally {
    await db.end();
  }
}

/** The stored failure counts, by key (PostgreSQL). */
async function storedFailures(workspace: Workspace): Promise<{ key: string; points: number }[]> {
  const db = new pg.Client({ connectionString: workspace.databaseUrl });
  await db.connect();
  try {
    return (await db.query<{ key: string; points: number }>('select key, points from auth_failures where expire > $1 order by key', [Date.now()])).rows;
  } finally {
    await db.end();
  }
}

/**
 * Registers `count` Basic clients named `<prefix>-<i>`: the first through the CLI, the others
 * copied from it by a migration of the test's own, each with a secret of its own (one CLI
 * run each would take minutes, and registration is not what this file tests). Returns each
 * client's secret.
 */
async function registerMany(workspace: Workspace, prefix: string, count: number): Promise<(i: number) => string> {
  const { client_secret: first } = await addClient(workspace, `${prefix}-0`, ['--auth', 'client_secret_basic', '--audience', API]);
  writeFileSync(join(workspace.migrationsDir, '29990101000000_copies.ts'), `
import { hash } from 'node:crypto';
import type { Knex } from 'knex';
export async function up(knex: Knex): Promise<void> {
  const client = await knex('clients').where({ client_id: ${JSON.stringify(`${prefix}-0`)} }).first();
  for (let i = 1; i < ${count}; i += 1) {
    const id = ${JSON.stringify(`${prefix}-`)} + i;
    await knex('clients').insert({ ...client, client_id: id });
    await knex('client_secrets').insert({ client_id: id, digest: 'sha256:' + hash('sha256', ${JSON.stringify(first)} + '-' + i, 'base64url') });
  }
}
export async function down(): Promise<void> {}
`);
  return (i) => (i === 0 ? first! : `${first}-${i}`);
}

describe('correct clients with the default limits', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let secret: string;
  let natSecret: (i: number) => string;

  beforeAll(async () => {
    workspace = await createWorkspace();
    cleanup.push(() => workspace.remove());
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    natSecret = await registerMany(workspace, 'nat', NAT_CLIENTS + 1);
    server = await startServer(workspace);
    cleanup.push(() => server.stop());
  });

  test.each([5, 11, 40, 200])('a burst of %i requests at once from one address: every one 200, the next one too, and one a moment later', async (size) => {
    const send = clientAt(workspace, `127.0.1.${size}`, 256);
    const statuses = await Promise.all(Array.from({ length: size }, () => send(server, 'svc', secret)));
    expect(countStatuses(statuses)).toEqual({ 200: size });
    expect(await send(server, 'svc', secret)).toBe(200);
    // Nothing of a correct burst is left counted against the client; a second later, it
    // still gets its token (points that attempts had held were counted against it there).
    expect(await storedFor(workspace, `127.0.1.${size}`)).toEqual([]);
    await sleep(1500);
    expect(await send(server, 'svc', secret)).toBe(200);
  });

  test(`${NAT_CLIENTS} different clients behind one address, all at once: every one 200, and the next client too`, async () => {
    const send = clientAt(workspace, '127.0.2.1', 512);
    const statuses = await Promise.all(Array.from({ length: NAT_CLIENTS }, (_, i) => send(server, `nat-${i}`, natSecret(i))));
    expect(countStatuses(statuses)).toEqual({ 200: NAT_CLIENTS });
    expect(await send(server, `nat-${NAT_CLIENTS}`, natSecret(NAT_CLIENTS))).toBe(200);
    expect(await storedFor(workspace, '127.0.2.1')).toEqual([]);
    await sleep(1500);
    expect(await send(server, 'nat-0', natSecret(0))).toBe(200);
  });

  test('a burst of 40 right after a few wrong secrets from the same address: every correct one 200', async () => {
    const send = clientAt(workspace, '127.0.2.2', 256);
    // Failures shrink how many attempts are evaluated at once; they do not refuse a correct client.
    expect(countStatuses(await Promise.all(Array.from({ length: 3 }, () => send(server, 'svc', 'wrong'))))).toEqual({ 401: 3 });
    const statuses = await Promise.all(Array.from({ length: 40 }, () => send(server, 'svc', secret)));
    expect(countStatuses(statuses)).toEqual({ 200: 40 });
  });

  (process.env.TEST_DATABASE_URL ? test : test.skip)('steady keep-alive traffic of a correct client writes nothing to the database', async () => {
    const send = clientAt(workspace, '127.0.2.3', 16);
    // The first request of a key in a process reserves a failure and gives it back: open the
    // 16 connections (reaching every worker, with WORKERS=2) before looking.
    expect(await Promise.all(Array.from({ length: 16 }, () => send(server, 'svc', secret)))).toEqual(Array(16).fill(200));
    await eventually(async () => (await storedFailures(workspace)).filter((r) => r.key.includes('127.0.2.3')).every((r) => r.points === 0), 15_000, 'the reservations given back');
    // Every write makes a new row version (a new ctid), even one that changes nothing.
    const before = await storedRows(workspace);
    for (let round = 0; round < 25; round += 1) {
      expect(await Promise.all(Array.from({ length: 16 }, () => send(server, 'svc', secret)))).toEqual(Array(16).fill(200));
    }
    expect(await storedRows(workspace)).toEqual(before);
  });

  (process.env.TEST_DATABASE_URL ? test : test.skip)('failures are stored: the three wrong secrets above, and nothing counted for the correct traffic', async () => {
    const rows = (await storedFailures(workspace)).filter((r) => r.points > 0);
    expect(rows.map((r) => r.points)).toEqual([3, 3]);
    expect(rows.every((r) => r.key.includes('127.0.2.2'))).toBe(true);
  });
});

describe('wrong secrets at once, with the default limits', () => {
  let workspace: Workspace;
  let server: RunningServer;

  beforeAll(async () => {
    workspace = await createWorkspace();
    cleanup.push(() => workspace.remove());
    await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API]);
    server = await startServer(workspace);
    cleanup.push(() => server.stop());
  });

  test('300 at once: the limit are evaluated, however many processes, and refused attempts never raise the count', async () => {
    // 250 connections: MAX_CONNECTIONS_PER_ADDRESS (256) closes any more from one address.
    const send = clientAt(workspace, '127.0.3.1', 250);
    const seen = countStatuses(await Promise.all(Array.from({ length: 300 }, (_, i) => send(server, 'svc', `guess-${i}`))));
    expect(seen[401]! + seen[429]!).toBe(300);
    expect(seen[401]).toBe(LIMIT);
    const more = countStatuses(await Promise.all(Array.from({ length: 50 }, (_, i) => send(server, 'svc', `again-${i}`))));
    expect(more).toEqual({ 429: 50 });
    if (workspace.databaseUrl) {
      const client = (await storedFailures(workspace)).find((r) => r.key.startsWith('client:'));
      expect(client?.points).toBe(seen[401]);
    }
  });
});

onPostgres('two instances on one database, with the default limits', () => {
  let workspace: Workspace;
  let servers: RunningServer[];
  let secret: string;

  const start = async (port?: number) => {
    const env: Record<string, string> = port ? { PORT: String(port), ISSUER: `https://localhost:${port}` } : {};
    const server = await startServer(workspace, env);
    cleanup.push(() => server.stop());
    return server;
  };

  beforeAll(async () => {
    workspace = await createWorkspace();
    cleanup.push(() => workspace.remove());
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    servers = [await start(), await start(await freePort())];
  });

  test('one client at 400 requests a second from one address, spread over both for 10 s: no 429', async () => {
    const send = clientAt(workspace, '127.0.4.1', 128);
    const sent: Promise<number>[] = [];
    const started = Date.now();
    // 4 requests every 10 ms, alternately to each instance, paced from the start so that a
    // slow moment does not lower the rate.
    for (let tick = 0; tick < 1000; tick += 1) {
      for (let i = 0; i < 4; i += 1) sent.push(send(servers[(tick * 4 + i) % 2]!, 'svc', secret));
      const ahead = started + (tick + 1) * 10 - Date.now();
      if (ahead > 0) await sleep(ahead);
    }
    const seen = countStatuses(await Promise.all(sent));
    expect(seen).toEqual({ 200: 4000 });
    expect(await storedFor(workspace, '127.0.4.1')).toEqual([]);
  });

  test('kill -9 of an instance in the middle of a burst: the next request on the other, and on the restarted one, gets 200', async () => {
    const send = clientAt(workspace, '127.0.4.2', 256);
    const [victim, survivor] = servers as [RunningServer, RunningServer];
    const burst = Array.from({ length: 40 }, () => send(victim, 'svc', secret).catch(() => 0));
    await sleep(5);
    victim.process.kill('SIGKILL');
    await Promise.all(burst);
    expect(await send(survivor, 'svc', secret)).toBe(200);
    const restarted = await startServer(workspace, { PORT: String(victim.port), ISSUER: victim.issuer });
    cleanup.push(() => restarted.stop());
    servers = [restarted, survivor];
    expect(await send(restarted, 'svc', secret)).toBe(200);
    expect(await send(survivor, 'svc', secret)).toBe(200);
    // At most the one reservation per key each killed process may have held is left counted:
    // with TEST_WORKERS the instance was that many workers, each with requests in flight.
    const killed = Number(process.env.TEST_WORKERS ?? 1);
    for (const points of await storedFor(workspace, '127.0.4.2')) expect(points).toBeLessThanOrEqual(killed);
  });

  test('300 wrong secrets at once spread over both: the limit are evaluated', async () => {
    const send = clientAt(workspace, '127.0.4.3', 300);
    const statuses = await Promise.all(Array.from({ length: 300 }, (_, i) => send(servers[i % 2]!, 'svc', `guess-${randomUUID()}`)));
    const seen = countStatuses(statuses);
    expect(seen[401]! + seen[429]!).toBe(300);
    expect(seen[401]).toBe(LIMIT);
    const stored = (await storedFailures(workspace)).find((r) => r.key.startsWith('client:127.0.4.3'));
    expect(stored?.points).toBe(seen[401]);
  });
});

onPostgres('two workers on PostgreSQL', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let secret: string;

  beforeAll(async () => {
    workspace = await createWorkspace({ WORKERS: '2' });
    cleanup.push(() => workspace.remove());
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    server = await startServer(workspace, { WORKERS: '2' });
    cleanup.push(() => server.stop());
  });

  test('kill -9 of a worker in the middle of a burst: the next request gets 200', async () => {
    const pids = () => new Set(server.output().split('\n').filter((l) => l.includes('"msg":"listening"')).map((l) => JSON.parse(l).pid as number));
    await eventually(async () => pids().size === 2, 30_000, 'two workers');
    const send = clientAt(workspace, '127.0.5.1', 256);
    const burst = Array.from({ length: 40 }, () => send(server, 'svc', secret).catch(() => 0));
    await sleep(5);
    process.kill([...pids()][0]!, 'SIGKILL');
    const statuses = await Promise.all(burst);
    expect(statuses.filter((s) => s === 429)).toEqual([]);
    await eventually(async () => pids().size === 3, 30_000, 'a replacement worker');
    const after = await Promise.all(Array.from({ length: 8 }, () => send(server, 'svc', secret)));
    expect(after).toEqual(Array(8).fill(200));
    // At most the one reservation per key the killed worker may have held is left counted.
    for (const points of await storedFor(workspace, '127.0.5.1')) expect(points).toBeLessThanOrEqual(1);
  });
});
