// Signing keys across processes, as operators and resource APIs meet them: two instances on
// one database agree on every key, and `keys generate|retire` from a third process reach
// both; an upgrade from key files keeps every kid and the signer, and imports once.
// (Rotation and each server's own delays: key-rotation.test.ts; keys at rest and the keys
// command alone: key-storage.test.ts.) No assertion races a clock: the schedule's times are
// settings, every "not before" is checked against the database's own times, and every wait
// is for an outcome with a generous deadline.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { API, epoch, expectOneLineRefusal, jwks, listKeys, newKek, publishedKids, rsaKey, token, twoInstances, verifyWith, type Issued, type KeyRow } from './helpers/keys.ts';
import { addClient, createWorkspace, eventually, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

/**
 * Concurrent requests to one server: with TEST_WORKERS a server is several processes, and
 * each of these connections is handed to the next worker in turn, so every worker answers.
 */
const PER_SERVER = 4;

/** Asks every server for tokens until `until` holds; returns every token issued meanwhile. */
async function tokensUntil(servers: RunningServer[], secret: string, until: (latest: Issued[]) => boolean, ms: number, what: string): Promise<Issued[]> {
  const all: Issued[] = [];
  await eventually(async () => {
    const latest = await Promise.all(servers.flatMap((s) => Array.from({ length: PER_SERVER }, () => token(s, secret))));
    all.push(...latest);
    return until(latest);
  }, ms, what);
  return all;
}

twoInstances('two instances on one database (PostgreSQL only: the embedded database opens in one process)', () => {
  const JWKS_MAX_AGE = 2;
  const KEYS_RELOAD_SECONDS = 1;
  const MAX_ACCESS_TOKEN_TTL = 40;
  /** Generous: a loaded machine may take seconds for what takes milliseconds. */
  const DEADLINE_MS = 30_000;
  let workspace: Workspace;
  let a: RunningServer;
  let b: RunningServer;
  let secret: string;
  let k1: string;
  let k2: string;
  const issuedBy = new Map<string, Issued[]>();
  const keep = (tokens: Issued[]) => tokens.forEach((t) => issuedBy.set(t.kid, [...(issuedBy.get(t.kid) ?? []), t]));

  beforeAll(async () => {
    workspace = await createWorkspace({
      JWKS_MAX_AGE: String(JWKS_MAX_AGE),
      KEYS_RELOAD_SECONDS: String(KEYS_RELOAD_SECONDS),
      MAX_ACCESS_TOKEN_TTL: String(MAX_ACCESS_TOKEN_TTL),
      ACCESS_TOKEN_TTL: String(MAX_ACCESS_TOKEN_TTL),
      KEYS_ENCRYPTION_KEY: newKek(),
      KEY_ROTATION_DAYS: '0',
    });
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    a = await startServer(workspace);
    const port = await freePort();
    b = await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` });
  });

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await workspace?.remove();
  });

  test('both publish the same /jwks and sign with the same key; a token from either verifies against the other', async () => {
    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.state, k.origin])).toEqual([['signing', 'first-start']]);
    k1 = keys[0]!.kid;
    expect(await jwks(a)).toEqual(await jwks(b));
    expect(await publishedKids(a)).toEqual([k1]);
    const [fromA, fromB] = [await token(a, secret), await token(b, secret)];
    expect([fromA.kid, fromB.kid]).toEqual([k1, k1]);
    expect((await verifyWith(b, fromA)).protectedHeader.kid).toBe(k1);
    expect((await verifyWith(a, fromB)).protectedHeader.kid).toBe(k1);
    keep([fromA, fromB]);
  });

  test('keys generate from a third process: in both /jwks at once, signing in both only from its signs_from', async () => {
    const generated = await workspace.cli('keys', ['generate', '--json']);
    expect(generated).toMatchObject({ code: 0, stderr: '' });
    const out = JSON.parse(generated.stdout) as { kid: string; state: string; signs_from: string };
    k2 = out.kid;
    expect(out.state).toBe('pending');
    const row = (await listKeys(workspace)).find((k) => k.kid === k2)!;
    // The delay is the database's: published_at and signs_from come from its clock.
    expect(epoch(row.signs_from!) - epoch(row.published_at)).toBeCloseTo(JWKS_MAX_AGE + KEYS_RELOAD_SECONDS, 2);
    expect(epoch(out.signs_from)).toBeCloseTo(epoch(row.signs_from!), 2);

    await eventually(async () => (await publishedKids(a)).includes(k2) && (await publishedKids(b)).includes(k2), DEADLINE_MS, `${k2} in both /jwks`);
    // Until both sign with K2, every token either signs is K1's, or K2's issued no earlier than K2 may sign.
    const tokens = await tokensUntil([a, b], secret, (latest) => latest.every((t) => t.kid === k2), DEADLINE_MS, `${k2} signing in both`);
    keep(tokens);
    expect(tokens.some((t) => t.kid === k2)).toBe(true);
    for (const t of tokens.filter((t) => t.kid === k2)) expect(t.iat).toBeGreaterThanOrEqual(Math.floor(epoch(row.signs_from!)));
    expect(await jwks(a)).toEqual(await jwks(b));
    expect(await publishedKids(a)).toEqual([k2, k1]);
    // Tokens signed before and after the switch, by either, verify against either's /jwks.
    for (const t of [issuedBy.get(k1)!.at(-1)!, issuedBy.get(k2)!.at(-1)!]) {
      for (const server of [a, b]) await verifyWith(server, t);
    }
  });

  test('a pending key may be retired at once: it never signs', async () => {
    const k3 = await workspace.cli('keys', ['generate', '--json']);
    expect(k3.code).toBe(0);
    const pendingKid = (JSON.parse(k3.stdout) as { kid: string }).kid;
    expect((await workspace.cli('keys', ['retire', pendingKid, '--json'])).code).toBe(0);
    expect((await listKeys(workspace)).find((k) => k.kid === pendingKid)?.state).toBe('retired');
  });

  test('keys retire of the signer (K1 older and ready): neither signs with it, both publish it until its tokens have expired', async () => {
    const retired = await workspace.cli('keys', ['retire', k2, '--json']);
    expect(retired).toMatchObject({ code: 0, stderr: '' });
    const out = JSON.parse(retired.stdout) as { kid: string; state: string; retired_at: string; unpublish_at: string };
    const unpublishAt = epoch(out.unpublish_at);
    expect(unpublishAt - epoch(out.retired_at)).toBeCloseTo(2 * KEYS_RELOAD_SECONDS + MAX_ACCESS_TOKEN_TTL, 2);

    const tokens = await tokensUntil([a, b], secret, (latest) => latest.every((t) => t.kid === k1), DEADLINE_MS, `${k1} signing in both again`);
    keep(tokens);
    // Once both have switched, neither goes back to the retired key.
    const after = await Promise.all(Array.from({ length: 10 }, (_, i) => token(i % 2 ? a : b, secret)));
    expect(after.map((t) => t.kid)).toEqual(after.map(() => k1));
    const lastByK2 = issuedBy.get(k2)!.reduce((x, y) => (y.exp > x.exp ? y : x));
    expect(lastByK2.exp).toBeLessThanOrEqual(unpublishAt);

    // Well inside the publishing window (MAX_ACCESS_TOKEN_TTL is 40 s): both still publish it.
    const asked = Date.now() / 1000;
    const [kidsA, kidsB] = [await publishedKids(a), await publishedKids(b)];
    expect(asked).toBeLessThan(unpublishAt);
    expect(kidsA).toContain(k2);
    expect(kidsB).toContain(k2);
    for (const server of [a, b]) expect((await verifyWith(server, lastByK2)).protectedHeader.kid).toBe(k2);

    let goneAt = 0;
    await eventually(async () => {
      const [x, y] = [await publishedKids(a), await publishedKids(b)];
      goneAt = Date.now() / 1000;
      return !x.includes(k2) && !y.includes(k2);
    }, (unpublishAt - asked) * 1000 + DEADLINE_MS, `${k2} out of both /jwks`);
    // Not before every token it signed had expired (same host: one clock for the database and the servers).
    expect(goneAt).toBeGreaterThanOrEqual(unpublishAt);
    expect(lastByK2.exp).toBeLessThanOrEqual(goneAt);
    expect(await jwks(a)).toEqual(await jwks(b));
    expect((await listKeys(workspace)).find((k) => k.kid === k2)?.state).toBe('expired');
  });

  test('the keys command needs only DATABASE_URL and the key-encryption key, also in production', async () => {
    const env = { NODE_ENV: 'production', ISSUER: '', TLS_CERT: '', TLS_KEY: '' };
    const listed = await workspace.cli('keys', ['list', '--json'], env);
    expect(listed).toMatchObject({ code: 0, stderr: '' });
    expect((JSON.parse(listed.stdout) as KeyRow[]).map((k) => k.kid)).toContain(k1);
    expectOneLineRefusal(await workspace.cli('keys', ['list'], { ...env, KEYS_ENCRYPTION_KEY: '' }), /^error: setting KEYS_ENCRYPTION_KEY=/);
  });
});




describe('upgrade from key files', () => {
  let workspace: Workspace | undefined;
  afterEach(async () => {
    await workspace?.remove();
    workspace = undefined;
  });

  test('every kid is kept, the former signer still signs, a retired key stays published, and the import happens once', async () => {
    // As an earlier version left them: with a one-hour delay none of the three was ready, so
    // the oldest signed; a fourth had been retired.
    workspace = await createWorkspace({ JWKS_MAX_AGE: '3600', KEYS_ENCRYPTION_KEY: newKek(), MAX_ACCESS_TOKEN_TTL: '3600' });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    const files = [await rsaKey(), await rsaKey(), await rsaKey()];
    for (const key of files) {
      writeFileSync(join(workspace.keysDir, `sig-${key.kid}.pem`), key.pem, { mode: 0o600 });
      // Apart in time, as files written one after another by an operator.
      await new Promise((done) => setTimeout(done, 20));
    }
    const gone = await rsaKey();
    const now = Math.floor(Date.now() / 1000);
    const publicJwk = { kty: 'RSA', n: gone.jwk.n, e: gone.jwk.e, kid: gone.kid, alg: 'RS256', use: 'sig' };
    writeFileSync(join(workspace.keysDir, `sig-${gone.kid}.retired.json`), JSON.stringify({ kid: gone.kid, jwk: publicJwk, published_at: now - 100, retired_at: now - 10 }));

    let server = await startServer(workspace);
    expect(server.output()).toContain('imported the signing-key files of an earlier version');
    expect(server.output()).not.toContain('generated a development signing key');
    const issued = await token(server, secret);
    expect(issued.kid).toBe(files[0]!.kid);
    expect(new Set(await publishedKids(server))).toEqual(new Set([...files.map((k) => k.kid), gone.kid]));
    expect((await verifyWith(server, issued)).protectedHeader.kid).toBe(files[0]!.kid);
    await server.stop();

    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.kid, k.state, k.origin])).toEqual(expect.arrayContaining([
      [files[0]!.kid, 'signing', 'file'], [files[1]!.kid, 'pending', 'file'], [files[2]!.kid, 'pending', 'file'], [gone.kid, 'retired', 'file'],
    ]));
    expect(keys).toHaveLength(4);

    // Once: a later start finds the files still there and imports nothing; the database decides.
    expect((await workspace.cli('keys', ['retire', files[2]!.kid])).code).toBe(0);
    server = await startServer(workspace);
    expect(server.output()).not.toContain('imported the signing-key files');
    expect((await token(server, secret)).kid).toBe(files[0]!.kid);
    await server.stop();
    expect((await listKeys(workspace)).find((k) => k.kid === files[2]!.kid)?.state).toBe('retired');
  });

  test('of key files that had all been there long enough, the newest, which signed, keeps signing', async () => {
    // A delay of one second: after three, both files had become ready under the earlier version's rule.
    // Rotation off: with it on, the older key would be retired once the newer one signs.
    workspace = await createWorkspace({ JWKS_MAX_AGE: '0', KEYS_RELOAD_SECONDS: '1', KEYS_ENCRYPTION_KEY: newKek(), KEY_ROTATION_DAYS: '0' });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    const [older, newer] = [await rsaKey(), await rsaKey()];
    writeFileSync(join(workspace.keysDir, `sig-${older.kid}.pem`), older.pem, { mode: 0o600 });
    await new Promise((done) => setTimeout(done, 50));
    writeFileSync(join(workspace.keysDir, `sig-${newer.kid}.pem`), newer.pem, { mode: 0o600 });
    await new Promise((done) => setTimeout(done, 3000));
    const server = await startServer(workspace);
    expect((await token(server, secret)).kid).toBe(newer.kid);
    expect(await publishedKids(server)).toEqual([newer.kid, older.kid]);
    await server.stop();
    expect((await listKeys(workspace)).map((k) => [k.kid, k.state])).toEqual([[older.kid, 'published'], [newer.kid, 'signing']]);
  });
});
