// Signing-key rotation on a running server, as an operator does it: `keys generate`, wait,
// `keys retire`. A resource API verifying with jose against /jwks must never meet a kid it
// cannot find, and tokens signed before a rotation keep verifying.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { calculateJwkThumbprint, createRemoteJWKSet, customFetch, jwtVerify, type JWK } from 'jose';
import { fetch as undiciFetch } from 'undici';

import { addClient, createWorkspace, decodeJwtPart, eventually, sleep, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const JWKS_MAX_AGE = 3;
const KEYS_RELOAD_SECONDS = 1;
const MAX_ACCESS_TOKEN_TTL = 5;
/** A new key signs only after it has been published this long. */
const SIGNING_DELAY = JWKS_MAX_AGE + KEYS_RELOAD_SECONDS;
/** A running server notices a key file change within one reload interval; one more second for the CLI and polling. */
const NOTICE_MS = (KEYS_RELOAD_SECONDS + 1) * 1000;
const SCHEDULE = {
  JWKS_MAX_AGE: String(JWKS_MAX_AGE),
  KEYS_RELOAD_SECONDS: String(KEYS_RELOAD_SECONDS),
  MAX_ACCESS_TOKEN_TTL: String(MAX_ACCESS_TOKEN_TTL),
  ACCESS_TOKEN_TTL: String(MAX_ACCESS_TOKEN_TTL),
};

interface KeyRow {
  kid: string;
  state: string;
  published_at: string;
  signs_from: string | null;
  retired_at: string | null;
  unpublish_at: string | null;
}

interface Issued {
  token: string;
  kid: string;
  iat: number;
  exp: number;
}

const epoch = (iso: string) => Date.parse(iso) / 1000;

async function token(server: RunningServer, secret: string): Promise<Issued> {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
  expect(res.status).toBe(200);
  const token = res.body.access_token as string;
  const { kid } = decodeJwtPart(token, 0) as { kid: string };
  const { iat, exp } = decodeJwtPart(token, 1) as { iat: number; exp: number };
  return { token, kid, iat, exp };
}

async function publishedKids(server: RunningServer): Promise<string[]> {
  const res = await server.fetch('/jwks');
  expect(res.status).toBe(200);
  const body = await res.json() as { keys: { kid: string; d?: string }[] };
  expect(body.keys.every((k) => k.d === undefined)).toBe(true);
  return body.keys.map((k) => k.kid);
}

async function listKeys(workspace: Workspace): Promise<KeyRow[]> {
  const result = await workspace.cli('keys', ['list', '--json']);
  expect(result).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as KeyRow[];
}

/**
 * When a token was valid. Earlier tokens are verified as of then: their lifetime here is the
 * test's short MAX_ACCESS_TOKEN_TTL, and what is checked is that /jwks still has their key.
 */
const validAt = (issued: Issued) => new Date(issued.iat * 1000);

/** A resource API: jose's remote JWK Set on /jwks, trusting the development CA. */
function verifyWithJwks(server: RunningServer, token: string, currentDate?: Date) {
  const fetchWithCa = (url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: server.agent() }) as unknown as Promise<Response>;
  const jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`), { [customFetch]: fetchWithCa });
  return jwtVerify(token, jwks, {
    issuer: server.issuer, audience: API, typ: 'at+jwt', algorithms: ['RS256'], ...(currentDate ? { currentDate } : {}),
  });
}

/** An RSA key file as an operator would bring one (openssl genpkey): `sig-<thumbprint>.pem`. */
async function keyFile(): Promise<{ kid: string; name: string; pem: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }) as JWK, 'sha256');
  return { kid, name: `sig-${kid}.pem`, pem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}

function expectOneLineRefusal(result: { code: number; stdout: string; stderr: string }, pattern: RegExp) {
  expect(result.code).toBe(2);
  expect(result.stdout).toBe('');
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(pattern);
}

describe('rotation while the server runs', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let secret: string;
  let k1: string;
  let k2: string;
  let t1: Issued;
  /** The last token K1 signed before K2 took over. */
  let lastByK1: Issued;

  beforeAll(async () => {
    workspace = await createWorkspace(SCHEDULE);
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    server = await startServer(workspace);
  });

  afterAll(async () => {
    await server?.stop();
    await workspace?.remove();
  });

  test('the first key (generated on first start) signs and is the only one published', async () => {
    const keys = await listKeys(workspace);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ state: 'signing', retired_at: null, unpublish_at: null });
    k1 = keys[0]!.kid;
    t1 = await token(server, secret);
    expect(t1.kid).toBe(k1);
    expect(await publishedKids(server)).toEqual([k1]);
    const { protectedHeader } = await verifyWithJwks(server, t1.token);
    expect(protectedHeader.kid).toBe(k1);
  });

  test('/jwks may be cached for exactly JWKS_MAX_AGE seconds', async () => {
    const res = await server.fetch('/jwks');
    expect(res.headers.get('cache-control')).toBe(`public, max-age=${JWKS_MAX_AGE}`);
  });

  test('keys generate: the new key is in /jwks within the reload interval while the old one keeps signing', async () => {
    t1 = await token(server, secret);
    const generated = await workspace.cli('keys', ['generate', '--json']);
    expect(generated).toMatchObject({ code: 0, stderr: '' });
    const out = JSON.parse(generated.stdout) as { kid: string; state: string; signs_from: string };
    k2 = out.kid;
    expect(k2).not.toBe(k1);
    expect(out.state).toBe('pending');
    expect(epoch(out.signs_from)).toBeGreaterThan(Date.now() / 1000);

    // All of this well within the new key's delay, so side by side.
    const [refusal, keys] = await Promise.all([
      // The signer cannot be retired before its successor may sign.
      workspace.cli('keys', ['retire', k1]),
      listKeys(workspace),
      eventually(async () => (await publishedKids(server)).includes(k2), NOTICE_MS, `${k2} in /jwks`),
    ]);
    expectOneLineRefusal(refusal, /^error: no other key has been published for 4 s yet/);
    expect(existsSync(join(workspace.keysDir, `sig-${k1}.pem`))).toBe(true);
    expect(keys.map((k) => [k.kid, k.state])).toEqual([[k1, 'signing'], [k2, 'pending']]);

    expect(await publishedKids(server)).toEqual([k1, k2]);
    const meanwhile = await token(server, secret);
    expect(meanwhile.kid).toBe(k1);
    expect(meanwhile.iat).toBeLessThan(epoch(out.signs_from));

    // Issued before the rotation began, still verifying against the new /jwks.
    const { payload } = await verifyWithJwks(server, t1.token, validAt(t1));
    expect(payload.jti).toBe(decodeJwtPart(t1.token, 1).jti);
  });

  test('the new key signs once its schedule allows, never before, and earlier tokens keep verifying', async () => {
    const signsFrom = epoch((await listKeys(workspace)).find((k) => k.kid === k2)!.signs_from!);
    lastByK1 = t1;
    let latest = t1;
    await eventually(async () => {
      const next = await token(server, secret);
      if (next.kid === k1) lastByK1 = next;
      latest = next;
      return next.kid === k2;
    }, (SIGNING_DELAY + KEYS_RELOAD_SECONDS + 2) * 1000, `${k2} signing`);
    expect(latest.kid).toBe(k2);
    expect(latest.iat).toBeGreaterThanOrEqual(signsFrom);
    expect(lastByK1?.kid).toBe(k1);

    // Each worker rereads KEYS_DIR on its own timer: within one interval all list K2 first.
    let kids: string[] = [];
    await eventually(async () => {
      kids = await publishedKids(server);
      return kids[0] === k2;
    }, (KEYS_RELOAD_SECONDS + 2) * 1000, `${k2} listed first`);
    expect(kids).toEqual([k2, k1]);
    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.kid, k.state])).toEqual([[k1, 'published'], [k2, 'signing']]);

    const byK2 = await verifyWithJwks(server, latest.token);
    expect(byK2.protectedHeader.kid).toBe(k2);
    const byK1 = await verifyWithJwks(server, lastByK1.token, validAt(lastByK1));
    expect(byK1.protectedHeader.kid).toBe(k1);
  });

  test('keys retire: the old key stays in /jwks until no token it signed can be unexpired, then leaves', async () => {
    const retired = await workspace.cli('keys', ['retire', k1, '--json']);
    expect(retired).toMatchObject({ code: 0, stderr: '' });
    const out = JSON.parse(retired.stdout) as { kid: string; state: string; unpublish_at: string };
    expect(out).toMatchObject({ kid: k1, state: 'retired' });
    const unpublishAt = epoch(out.unpublish_at);
    expect(existsSync(join(workspace.keysDir, `sig-${k1}.pem`))).toBe(false);

    // Listed while the server notices the retirement (one reload interval).
    const [keys] = await Promise.all([listKeys(workspace), sleep(KEYS_RELOAD_SECONDS * 1000 + 200)]);
    expect(keys.map((k) => [k.kid, k.state])).toEqual([[k1, 'retired'], [k2, 'signing']]);
    const row = keys.find((k) => k.kid === k1)!;
    expect(row.signs_from).toBeNull();
    expect(epoch(row.unpublish_at!)).toBe(unpublishAt);
    expect(unpublishAt - epoch(row.retired_at!)).toBe(KEYS_RELOAD_SECONDS + MAX_ACCESS_TOKEN_TTL);

    // The server has reloaded: the retired key is still published and signs nothing.
    expect(await publishedKids(server)).toEqual([k2, k1]);
    expect((await token(server, secret)).kid).toBe(k2);
    expect((await verifyWithJwks(server, lastByK1.token, validAt(lastByK1))).protectedHeader.kid).toBe(k1);

    let seenGoneAt = 0;
    await eventually(async () => {
      const kids = await publishedKids(server);
      seenGoneAt = Date.now();
      return !kids.includes(k1);
    }, (unpublishAt + KEYS_RELOAD_SECONDS + 2) * 1000 - Date.now(), `${k1} out of /jwks`);
    expect(seenGoneAt).toBeGreaterThanOrEqual(unpublishAt * 1000);
    // Every token K1 signed had expired by then.
    expect(lastByK1.exp * 1000).toBeLessThanOrEqual(seenGoneAt);
    // With several workers each rereads KEYS_DIR on its own timer: after one more interval
    // every one of them has let K1 go.
    await sleep(KEYS_RELOAD_SECONDS * 1000 + 200);
    expect(await publishedKids(server)).toEqual([k2]);
    await expect(verifyWithJwks(server, lastByK1.token, validAt(lastByK1))).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });

    const after = await listKeys(workspace);
    expect(after.find((k) => k.kid === k1)?.state ?? 'forgotten').toMatch(/^(expired|forgotten)$/);
    expect(after.find((k) => k.kid === k2)?.state).toBe('signing');
  });

  test('retiring the only signing key is refused with exit 2 and one clear line', async () => {
    for (const args of [['retire', k2], ['retire', k2, '--force'], ['retire', k2, '--json']]) {
      expectOneLineRefusal(await workspace.cli('keys', args), /^error: key \S+ is the only signing key/);
    }
    expectOneLineRefusal(await workspace.cli('keys', ['retire', 'no-such-kid']), /^error: no signing key no-such-kid/);
    expect(existsSync(join(workspace.keysDir, `sig-${k2}.pem`))).toBe(true);
    await sleep(NOTICE_MS);
    expect(await publishedKids(server)).toEqual([k2]);
    expect((await token(server, secret)).kid).toBe(k2);
  });

  test('a key file moved in with an old modification time is published at once but signs only on schedule', async () => {
    // Made elsewhere earlier (after the current signer, long enough ago to look ready), then moved in.
    const staged = await keyFile();
    const staging = join(workspace.dir, 'staging');
    mkdirSync(staging, { recursive: true });
    writeFileSync(join(staging, staged.name), staged.pem, { mode: 0o600 });
    const k2Published = epoch((await listKeys(workspace)).find((k) => k.kid === k2)!.published_at);
    const madeAt = Math.floor(Date.now() / 1000) - SIGNING_DELAY - 2;
    expect(madeAt).toBeGreaterThan(k2Published);
    utimesSync(join(staging, staged.name), madeAt, madeAt);
    const movedAt = Date.now();
    renameSync(join(staging, staged.name), join(workspace.keysDir, staged.name));

    const [keys] = await Promise.all([
      listKeys(workspace),
      eventually(async () => (await publishedKids(server)).includes(staged.kid), NOTICE_MS, `${staged.kid} in /jwks`),
    ]);
    expect((await token(server, secret)).kid).toBe(k2);
    expect(keys.find((k) => k.kid === staged.kid)?.state).toBe('pending');

    let latest = await token(server, secret);
    await eventually(async () => {
      latest = await token(server, secret);
      return latest.kid === staged.kid;
    }, (SIGNING_DELAY + KEYS_RELOAD_SECONDS + 2) * 1000, `${staged.kid} signing`);
    // Published (here: moved in) for at least the /jwks cache lifetime before it signed.
    expect(latest.iat).toBeGreaterThanOrEqual(Math.floor(movedAt / 1000) + JWKS_MAX_AGE);
    expect((await verifyWithJwks(server, latest.token)).protectedHeader.kid).toBe(staged.kid);
  });
});

describe('the first key signs at once', () => {
  // A schedule longer than a start takes, so that signing at once is told apart from waiting.
  const jwksMaxAge = 120;
  let workspace: Workspace | undefined;
  let server: RunningServer | undefined;

  afterEach(async () => {
    await server?.stop();
    await workspace?.remove();
    server = workspace = undefined;
  });

  async function start(prepare: (workspace: Workspace) => void | Promise<void>): Promise<{ issued: Issued; keys: KeyRow[]; running: RunningServer }> {
    workspace = await createWorkspace({ ...SCHEDULE, JWKS_MAX_AGE: String(jwksMaxAge) });
    const { client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string };
    await prepare(workspace);
    server = await startServer(workspace);
    const issued = await token(server, secret);
    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.kid, k.state])).toEqual([[issued.kid, 'signing']]);
    // Long before a later key would be allowed to sign.
    expect(issued.iat).toBeLessThan(epoch(keys[0]!.published_at) + jwksMaxAge);
    expect(await publishedKids(server)).toEqual([issued.kid]);
    expect((await verifyWithJwks(server, issued.token)).protectedHeader.kid).toBe(issued.kid);
    return { issued, keys, running: server };
  }

  test('a development key generated by the first start in an empty keys dir', async () => {
    const { issued, running } = await start(() => {});
    expect(running.output()).toContain('"msg":"generated a development signing key"');
    expect(running.output()).toContain(`"kid":"${issued.kid}"`);
  });

  test('a key file dropped into an empty keys dir, with no development key generated beside it', async () => {
    const dropped = await keyFile();
    const { issued, running } = await start((ws) => writeFileSync(join(ws.keysDir, dropped.name), dropped.pem, { mode: 0o600 }));
    expect(issued.kid).toBe(dropped.kid);
    expect(running.output()).not.toContain('generated a development signing key');
  });

  test('a key made by `keys generate` in an empty keys dir', async () => {
    let generated: { kid: string; state: string; signs_from: string } | undefined;
    const { issued } = await start(async (ws) => {
      const result = await ws.cli('keys', ['generate', '--json']);
      expect(result).toMatchObject({ code: 0, stderr: '' });
      generated = JSON.parse(result.stdout);
    });
    expect(generated).toMatchObject({ kid: issued.kid, state: 'signing', signs_from: 'now' });
  });
});

test('a kid that starts with "-" is taken as a kid, not as an option', async () => {
  const workspace = await createWorkspace();
  try {
    let kid = '';
    for (let i = 0; i < 1000 && !kid.startsWith('-'); i += 1) {
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      kid = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }) as JWK, 'sha256');
      if (kid.startsWith('-')) writeFileSync(join(workspace.keysDir, `sig-${kid}.pem`), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    }
    expect(kid.startsWith('-')).toBe(true);
    expect((await workspace.cli('keys', ['generate'])).code).toBe(0);
    const retired = await workspace.cli('keys', ['retire', kid, '--force', '--json']);
    expect(retired.stderr).toBe('');
    expect(JSON.parse(retired.stdout)).toMatchObject({ kid, state: 'retired' });
  } finally {
    await workspace.remove();
  }
});

test('of two keys that appear within one second, the one that appeared first signs, whatever their kids', async () => {
  const workspace = await createWorkspace({ ...SCHEDULE, JWKS_MAX_AGE: '120' });
  try {
    // The second key's kid sorts first, so an order by the whole second and then kid would
    // let it sign at once, before any resource API could have fetched it.
    let [first, second] = [await keyFile(), await keyFile()];
    if (second.kid.localeCompare(first.kid) > 0) [first, second] = [second, first];
    // Both files early in one second, 50 ms apart (file times here have a
    // resolution of a few milliseconds).
    await sleep(1010 - (Date.now() % 1000));
    writeFileSync(join(workspace.keysDir, first.name), first.pem, { mode: 0o600 });
    await sleep(50);
    writeFileSync(join(workspace.keysDir, second.name), second.pem, { mode: 0o600 });
    const keys = await listKeys(workspace);
    expect(new Set(keys.map((k) => k.published_at)).size).toBe(1);
    expect(keys.find((k) => k.kid === first.kid)?.state).toBe('signing');
    expect(keys.find((k) => k.kid === second.kid)?.state).toBe('pending');
  } finally {
    await workspace.remove();
  }
});
