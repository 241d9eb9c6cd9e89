// A key's time to sign is each server's own: `keys generate` runs in a deploy job that does
// not know the servers' JWKS_MAX_AGE, so what it assumes (here its defaults, 300 + 30 s)
// must not hold the key back at servers whose /jwks is cached for 12 s. Waits are for the
// outcome, with deadlines far from the bound; the bound itself is checked against the
// database's own times (the token's iat, on the same host).
import { randomBytes } from 'node:crypto';

import { addClient, createWorkspace, decodeJwtPart, eventually, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const ON_POSTGRES = Boolean(process.env.TEST_DATABASE_URL);
const JWKS_MAX_AGE = 12;
const KEYS_RELOAD_SECONDS = 1;
/** Far above the servers' bound (13 s), far below what the command assumed (330 s). */
const DEADLINE_MS = 200_000;

describe('the servers decide when a key added by the command signs', () => {
  let workspace: Workspace;
  let servers: RunningServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
    await workspace?.remove();
  });

  test('a key from `keys generate` with the command\'s default settings signs at servers with JWKS_MAX_AGE=12 within their own bound, not the command\'s', async () => {
    workspace = await createWorkspace({
      JWKS_MAX_AGE: String(JWKS_MAX_AGE), KEYS_RELOAD_SECONDS: String(KEYS_RELOAD_SECONDS), KEY_ROTATION_DAYS: '0',
      KEYS_ENCRYPTION_KEY: randomBytes(32).toString('base64url'),
    });
    const { client_secret: secret } = await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API]);
    const token = async (server: RunningServer) => {
      const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret!] });
      expect(res.status).toBe(200);
      const value = res.body.access_token as string;
      return { kid: decodeJwtPart(value, 0).kid as string, iat: decodeJwtPart(value, 1).iat as number };
    };
    const start = async () => {
      servers = [await startServer(workspace)];
      if (ON_POSTGRES) {
        const port = await freePort();
        servers.push(await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` }));
      }
    };
    await start();
    // The first key of an empty database signs at once.
    const k1 = (await token(servers[0]!)).kid;
    // The embedded database belongs to one process: the command runs while the server is stopped.
    if (!ON_POSTGRES) for (const server of servers) await server.stop();

    const defaults = { JWKS_MAX_AGE: '', KEYS_RELOAD_SECONDS: '' };
    const generated = await workspace.cli('keys', ['generate', '--json'], defaults);
    expect(generated).toMatchObject({ code: 0, stderr: '' });
    const out = JSON.parse(generated.stdout) as { kid: string; state: string; signs_from: string };
    const listed = JSON.parse((await workspace.cli('keys', ['list', '--json'], defaults)).stdout) as { kid: string; published_at: string }[];
    const publishedAt = Date.parse(listed.find((k) => k.kid === out.kid)!.published_at) / 1000;
    // What the command assumes, with its defaults: 330 s. The servers are not bound by it.
    expect(out.state).toBe('pending');
    expect(Date.parse(out.signs_from) / 1000 - publishedAt).toBeCloseTo(330, 1);
    if (!ON_POSTGRES) await start();

    for (const server of servers) {
      let first: { kid: string; iat: number } | undefined;
      const tokens: { kid: string; iat: number }[] = [];
      await eventually(async () => {
        const issued = await token(server);
        tokens.push(issued);
        first ??= issued.kid === out.kid ? issued : undefined;
        return first !== undefined;
      }, DEADLINE_MS, `${out.kid} signing`);
      // Never before the server's own bound; until then the first key signed.
      expect(first!.iat).toBeGreaterThanOrEqual(Math.floor(publishedAt + JWKS_MAX_AGE + KEYS_RELOAD_SECONDS));
      expect(tokens.filter((t) => t.kid !== out.kid).every((t) => t.kid === k1)).toBe(true);
    }
  }, 600_000);
});
