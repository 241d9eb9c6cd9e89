// Signing keys over time, across processes: automatic rotation with two instances makes one
// key per rotation and retires the key it replaced; rotation retires every older key once,
// however it came; a server applies its own delays to a key, whatever the keys command that
// scheduled it assumed. (Keys across processes: keys.test.ts.) Every wait is for an
// outcome with a generous deadline.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { API, listKeys, migrate, newKek, ON_POSTGRES, publishedKids, rsaKey, token, twoInstances, verifyWith } from './helpers/keys.ts';
import { addClient, createWorkspace, eventually, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

twoInstances('automatic rotation with two instances (PostgreSQL only)', () => {
  let workspace: Workspace;
  const servers: RunningServer[] = [];

  afterAll(async () => {
    for (const server of servers) await server.stop();
    await workspace?.remove();
  });

  test('one key per rotation, and the replaced key retired once its successor signs', async () => {
    // KEY_ROTATION_DAYS takes fractions: 0.00005 days is 4.32 s, and a new key signs 2 s after it is published.
    workspace = await createWorkspace({
      JWKS_MAX_AGE: '1', KEYS_RELOAD_SECONDS: '1', MAX_ACCESS_TOKEN_TTL: '5', ACCESS_TOKEN_TTL: '5',
      KEYS_ENCRYPTION_KEY: newKek(), KEY_ROTATION_DAYS: '0.00005',
    });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    servers.push(await startServer(workspace));
    const port = await freePort();
    servers.push(await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` }));

    // Both instances look every second: wait for three rotations.
    await eventually(async () => (await listKeys(workspace)).filter((k) => k.origin === 'rotation').length >= 3, 120_000, 'three rotations');
    // Signing went on throughout: a token from either verifies against the other's /jwks.
    const [fromA, fromB] = [await token(servers[0]!, secret), await token(servers[1]!, secret)];
    await verifyWith(servers[1]!, fromA);
    await verifyWith(servers[0]!, fromB);
    for (const server of servers) await server.stop();

    const keys = await listKeys(workspace);
    const rotations = keys.filter((k) => k.origin === 'rotation');
    // Each signer was succeeded once: no two keys replace the same one.
    expect(new Set(rotations.map((k) => k.replaces)).size).toBe(rotations.length);
    // A chain: each rotation replaced the key made just before it.
    expect(rotations.map((k) => k.replaces)).toEqual(keys.slice(0, rotations.length).map((k) => k.kid));
    // Every replaced key whose successor signed has been retired; at most the newest two are not.
    expect(keys.slice(0, -2).every((k) => k.retired_at !== null)).toBe(true);
    const logged = servers.flatMap((s) => s.output().split('\n').filter((l) => l.includes('generated the successor of the signing key')));
    expect(logged.length).toBe(rotations.length);
  }, 180_000);
});

describe('automatic rotation retires every older key, however it came', () => {
  let workspace: Workspace;
  const servers: RunningServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
    await workspace?.remove();
  });

  test('keys from the command (generate and import) are retired once a newer one signs, each once across instances', async () => {
    // Rotation on (one day: none is due during the test); a new key signs 1 s after it is published.
    workspace = await createWorkspace({
      JWKS_MAX_AGE: '0', KEYS_RELOAD_SECONDS: '1', MAX_ACCESS_TOKEN_TTL: '60', ACCESS_TOKEN_TTL: '60',
      KEYS_ENCRYPTION_KEY: newKek(), KEY_ROTATION_DAYS: '1',
    });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    await migrate(workspace);
    const generate = async () => (JSON.parse((await workspace.cli('keys', ['generate', '--json'])).stdout) as { kid: string }).kid;
    const k1 = await generate();
    const known = await rsaKey();
    const file = join(workspace.dir, 'k2.pem');
    writeFileSync(file, known.pem);
    expect((await workspace.cli('keys', ['import', file])).code).toBe(0);
    const k3 = await generate();

    servers.push(await startServer(workspace));
    if (ON_POSTGRES) {
      const port = await freePort();
      servers.push(await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` }));
    }
    const retiredLines = () => servers.flatMap((s) => s.output().split('\n').filter((l) => l.includes('automatic rotation: retired')));
    await eventually(async () => retiredLines().length >= 2, 30_000, 'the two older keys retired');
    for (const server of servers) {
      await eventually(async () => (await token(server, secret)).kid === k3, 30_000, `${k3} signing`);
      // Retired, they stay published for the tokens they signed.
      expect(new Set(await publishedKids(server))).toEqual(new Set([k1, known.kid, k3]));
    }
    // The embedded database opens in one process: list once the servers have stopped.
    for (const server of servers) await server.stop();
    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.kid, k.state, k.origin])).toEqual([[k1, 'retired', 'command'], [known.kid, 'retired', 'import'], [k3, 'signing', 'command']]);
    // Each retired once, by one instance: no rotation made a key.
    expect(retiredLines()).toHaveLength(2);
    expect(servers.some((s) => s.output().includes('generated the successor'))).toBe(false);
  }, 120_000);
});

describe('servers apply their own delays, whatever the keys command assumed', () => {
  let workspace: Workspace;
  const servers: RunningServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
    await workspace?.remove();
  });

  test('a key the command scheduled with shorter delays neither signs nor leaves /jwks before the servers\' own delays', async () => {
    // The servers: /jwks cached for an hour, tokens living an hour. The command runs with
    // its own, much shorter settings (as it would with none at all: the defaults are 300/30/3600).
    const serverTimes = { JWKS_MAX_AGE: '3600', MAX_ACCESS_TOKEN_TTL: '3600', KEYS_RELOAD_SECONDS: '1', KEY_ROTATION_DAYS: '0' };
    const command = { JWKS_MAX_AGE: '0', MAX_ACCESS_TOKEN_TTL: '1', ACCESS_TOKEN_TTL: '1', KEYS_RELOAD_SECONDS: '1' };
    workspace = await createWorkspace({ ...serverTimes, KEYS_ENCRYPTION_KEY: newKek() });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    await migrate(workspace);
    const kid = async (args: string[]) => {
      const result = await workspace.cli('keys', [...args, '--json'], command);
      expect(result).toMatchObject({ code: 0, stderr: '' });
      return (JSON.parse(result.stdout) as { kid: string }).kid;
    };
    const k1 = await kid(['generate']);
    const k2 = await kid(['generate']);
    const k3 = await kid(['generate']);
    await kid(['retire', k3]);
    // By the stored times (the command's), K2 signs and K3 has left /jwks: `keys list` shows them as stored.
    await eventually(async () => {
      const states = new Map((await listKeys(workspace, command)).map((k) => [k.kid, k.state]));
      return states.get(k2) === 'signing' && states.get(k3) === 'expired';
    }, 30_000, 'the stored times passed');

    servers.push(await startServer(workspace));
    if (ON_POSTGRES) {
      const port = await freePort();
      servers.push(await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` }));
    }
    for (const server of servers) {
      // K2 is published (its hour of caching has begun), but the old key keeps signing; the
      // retired K3 stays published for the servers' token lifetime.
      expect(await publishedKids(server)).toEqual([k1, k2, k3]);
      for (let i = 0; i < 3; i += 1) expect((await token(server, secret)).kid).toBe(k1);
    }
    if (ON_POSTGRES) {
      // Running servers too: a change read after the stored times leaves the signer as it was.
      const k4 = await kid(['generate']);
      await eventually(async () => (await Promise.all(servers.map(publishedKids))).every((kids) => kids.includes(k4)), 30_000, `${k4} in every /jwks`);
      for (const server of servers) {
        expect(await publishedKids(server)).toEqual([k1, k2, k3, k4]);
        expect((await token(server, secret)).kid).toBe(k1);
      }
    }
  }, 120_000);
});
