// The README's nginx configuration, as printed there, in front of the server in proxy
// mode. The block is taken out of README.md and only its ports, file paths and upstream
// are replaced, so what operators copy is what is tested. Clients are curl and openssl,
// each from its own loopback address (127.0.0.x), as different hosts would be, and the Go
// client of test/clients/go (crypto/tls sends its certificate only when no CA is named).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

import { Agent } from 'undici';

import { buildGoClient, expectVerified, goToken, missingGo, selfSigned, testWith, toolchain } from './helpers/clients.ts';
import { addClient, createWorkspace, decodeJwtPart, eventually, freePort, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const NGINX = '/usr/sbin/nginx';
const API = 'https://api.example.test';
const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };
const ADDRESS_LIMIT = 20;

// Skipped only on a developer's machine without nginx; in CI (`.ci/run` installs it) a
// missing nginx fails.
const nginxHere = existsSync(NGINX);
const describeWithNginx = nginxHere || process.env.CI === 'true' ? describe : describe.skip;
const goMissing = missingGo();

let workspace: Workspace;
let server: RunningServer;
let nginx: ChildProcess | undefined;
let nginxPort: number;
let prefix: string;
let certsDir: string;
const goCerts = {} as Record<'self' | 'rogue' | 'ca', [string, string]>;
const secrets: Record<string, string> = {};

/** The ```nginx block of README.md, with the README's indentation removed. */
function readmeNginxBlock(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/^( *)```nginx\n([\s\S]*?)^ *```/gm)];
  if (blocks.length !== 1) throw new Error(`README.md has ${blocks.length} nginx blocks; this test expects exactly one`);
  const [, indent, body] = blocks[0]!;
  return body!.split('\n').map((line) => (line.startsWith(indent!) ? line.slice(indent!.length) : line)).join('\n');
}

/** Only ports, file paths and the upstream change; anything else new in the block fails here. */
function localise(block: string, files: Record<string, string>, upstreamPort: number): string {
  let conf = block.replace(/^(\s*listen\s+)443(\s)/m, `$1127.0.0.1:${nginxPort}$2`);
  conf = conf.replace(/\/etc\/nginx\/tls\/([\w.-]+)/g, (_, name: string) => {
    const local = files[name];
    if (!local) throw new Error(`README's nginx block names /etc/nginx/tls/${name}: map it to a test file`);
    return local;
  });
  conf = conf.replace(/proxy_pass\s+http:\/\/[\d.]+:\d+;/, `proxy_pass http://127.0.0.1:${upstreamPort};`);
  for (const leftover of ['listen 443', '/etc/', '10.0.0.5']) {
    if (conf.includes(leftover)) throw new Error(`README's nginx block: "${leftover}" was not replaced`);
  }
  return conf;
}

function run(command: string, args: string[], input = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = execFile(command, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

interface CurlResult {
  status: number;
  body: any;
}

/** A token request with curl through nginx, from a loopback address of the caller's choice. */
async function curlToken(from: string, args: string[]): Promise<CurlResult> {
  const result = await run('curl', [
    '-sS', '--interface', from, '--resolve', `localhost:${nginxPort}:127.0.0.1`,
    '--cacert', join(workspace.keysDir, 'dev-ca.crt'),
    '-w', '\n%{http_code}', '-d', 'grant_type=client_credentials', ...args, `https://localhost:${nginxPort}/token`,
  ]);
  if (result.code !== 0) throw new Error(`curl failed (${result.code}): ${result.stderr}`);
  const cut = result.stdout.lastIndexOf('\n');
  const text = result.stdout.slice(0, cut);
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch { /* the test sees the text */ }
  return { status: Number(result.stdout.slice(cut + 1)), body };
}

function basic(from: string, clientId: string, secret: string, extra: string[] = []): Promise<CurlResult> {
  return curlToken(from, ['-u', `${clientId}:${secret}`, ...extra]);
}

function withCert(from: string, clientId: string, name: string, extra: string[] = []): Promise<CurlResult> {
  return curlToken(from, ['--cert', join(certsDir, `${name}.crt`), '--key', join(certsDir, `${name}.key`), '-d', `client_id=${clientId}`, ...extra]);
}

function thumbprint(pemFile: string): string {
  return createHash('sha256').update(new X509Certificate(readFileSync(pemFile)).raw).digest('base64url');
}

async function startNginx(): Promise<void> {
  prefix = join(workspace.dir, 'nginx');
  mkdirSync(join(prefix, 'logs'), { recursive: true });
  const files = {
    'auth.crt': join(workspace.keysDir, 'dev-server.crt'),
    'auth.key': join(workspace.keysDir, 'dev-server.key'),
    'client-ca.pem': join(workspace.keysDir, 'dev-ca.crt'),
  };
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((kind) => `  ${kind}_temp_path ${join(prefix, `${kind}_temp`)};`);
  // The wrapper a distribution's nginx.conf gives every server block, with paths of our own.
  const conf = [
    ...(process.getuid?.() === 0 ? ['user root;'] : []),
    'worker_processes 1;',
    'events { worker_connections 512; }',
    'http {',
    `  access_log ${join(prefix, 'logs', 'access.log')};`,
    ...temp,
    localise(readmeNginxBlock(), files, server.port),
    '}',
  ].join('\n');
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const errorLog = join(prefix, 'logs', 'error.log');
  nginx = spawn(NGINX, ['-e', errorLog, '-p', prefix, '-c', join(prefix, 'nginx.conf'),
    '-g', `daemon off; pid ${join(prefix, 'nginx.pid')}; error_log ${errorLog} notice;`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  nginx.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  nginx.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const started = nginx;
  await eventually(async () => {
    if (started.exitCode !== null) {
      throw new Error(`nginx exited with ${started.exitCode}: ${output}${existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : ''}`);
    }
    return new Promise<boolean>((done) => {
      const probe = connect({ host: '127.0.0.1', port: nginxPort });
      probe.once('connect', () => {
        probe.destroy();
        done(true);
      });
      probe.once('error', () => done(false));
    });
  }, 30_000, 'nginx listening');
}

describeWithNginx('the README\'s nginx in front of the server in proxy mode', () => {
  beforeAll(async () => {
    if (!nginxHere) throw new Error(`${NGINX} is missing: .ci/run installs Debian's nginx`);
    workspace = await createWorkspace();
    nginxPort = await freePort();
    certsDir = join(workspace.dir, 'client-certs');
    const issued = await workspace.cli('client', ['cert', 'svc-ng-mtls', '--out', certsDir, '--json']);
    if (issued.code !== 0) throw new Error(issued.stderr);
    const selfMade = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
      '-keyout', join(certsDir, 'self.key'), '-out', join(certsDir, 'self.crt'), '-subj', '/CN=svc-ng-mtls']);
    if (selfMade.code !== 0) throw new Error(selfMade.stderr);
    secrets.basic = (await addClient(workspace, 'svc-ng', ['--auth', 'client_secret_basic', '--audience', API])).client_secret!;
    secrets.victim = (await addClient(workspace, 'svc-ng-victim', ['--auth', 'client_secret_basic', '--audience', API])).client_secret!;
    await addClient(workspace, 'svc-ng-mtls', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-ng-mtls', '--audience', API, '--bound']);
    await addClient(workspace, 'svc-ng-self', ['--auth', 'self_signed_tls_client_auth', '--cert', join(certsDir, 'self.crt'), '--audience', API]);
    goCerts.self = await selfSigned(certsDir, 'go-self');
    goCerts.rogue = await selfSigned(certsDir, 'go-rogue');
    const goIssued = await workspace.cli('client', ['cert', 'svc-ng-go-ca', '--out', certsDir, '--json']);
    if (goIssued.code !== 0) throw new Error(goIssued.stderr);
    goCerts.ca = [join(certsDir, 'svc-ng-go-ca.crt'), join(certsDir, 'svc-ng-go-ca.key')];
    await addClient(workspace, 'svc-ng-go-self', ['--auth', 'self_signed_tls_client_auth', '--cert', goCerts.self[0], '--audience', API]);
    await addClient(workspace, 'svc-ng-go-ca', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-ng-go-ca', '--audience', API, '--bound']);
    server = await startServer(workspace, {
      TLS_MODE: 'proxy',
      TRUSTED_PROXIES: '127.0.0.1',
      ISSUER: `https://localhost:${nginxPort}`,
      AUTH_FAILURE_ADDRESS_LIMIT: String(ADDRESS_LIMIT),
    });
    await startNginx();
  });

  afterAll(async () => {
    if (nginx && nginx.exitCode === null) {
      const exited = new Promise((done) => nginx!.once('exit', done));
      nginx.kill('SIGTERM');
      await exited;
    }
    await server?.stop();
    await workspace?.remove();
  });

  test('client_secret_basic through nginx (curl)', async () => {
    const res = await basic('127.0.0.2', 'svc-ng', secrets.basic!);
    expect(res.status).toBe(200);
    expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({ iss: `https://localhost:${nginxPort}`, client_id: 'svc-ng', aud: API });
  });

  test('nginx offers TLS 1.3 and asks for a client certificate without naming CAs (Go and Java clients then send theirs)', async () => {
    const result = await run('openssl', ['s_client', '-connect', `127.0.0.1:${nginxPort}`, '-servername', 'localhost', '-tls1_3',
      '-CAfile', join(workspace.keysDir, 'dev-ca.crt')], 'Q\n');
    const text = result.stdout + result.stderr;
    expect(text).toMatch(/New, TLSv1\.3/);
    expect(text).toMatch(/No client certificate CA names sent/);
    expect(text).not.toMatch(/Acceptable client certificate CA names/);
  });

  test('tls_client_auth with a certificate from TLS_CLIENT_CA: the token is bound to it (cnf.x5t#S256)', async () => {
    const res = await withCert('127.0.0.2', 'svc-ng-mtls', 'svc-ng-mtls');
    expect(res.status).toBe(200);
    expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({
      client_id: 'svc-ng-mtls', cnf: { 'x5t#S256': thumbprint(join(certsDir, 'svc-ng-mtls.crt')) },
    });
  });

  test('self_signed_tls_client_auth with its registered self-signed certificate', async () => {
    const res = await withCert('127.0.0.2', 'svc-ng-self', 'self');
    expect(res.status).toBe(200);
    expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({ client_id: 'svc-ng-self' });
  });

  test('an X-SSL-Client-Cert header sent by the client is not believed, with or without a certificate of its own', async () => {
    const forged = ['-H', `X-SSL-Client-Cert: ${encodeURIComponent(readFileSync(join(certsDir, 'svc-ng-mtls.crt'), 'utf8'))}`];
    const without = await curlToken('127.0.0.2', ['-d', 'client_id=svc-ng-mtls', ...forged]);
    expect(without.status).toBe(401);
    expect(without.body).toEqual(CLIENT_AUTH_FAILED);
    const withOther = await withCert('127.0.0.2', 'svc-ng-mtls', 'self', forged);
    expect(withOther.status).toBe(401);
    expect(withOther.body).toEqual(CLIENT_AUTH_FAILED);
  });

  test('an X-Forwarded-For header sent by the client is not believed: the audit line shows the real address', async () => {
    const res = await basic('127.0.0.3', 'svc-ng', secrets.basic!, ['-H', 'X-Forwarded-For: 198.51.100.77']);
    expect(res.status).toBe(200);
    const { jti } = decodeJwtPart(res.body.access_token, 1);
    const [line] = await server.logLines((l) => l.event === 'token.issued' && l.jti === jti, 1);
    expect(line).toMatchObject({ client_id: 'svc-ng', address: '127.0.0.3' });
  });

  test('wrong secrets for a client from one address, under forged X-Forwarded-For values, lock it out there only', async () => {
    const answers: unknown[] = [];
    for (let i = 1; i <= 10; i += 1) {
      const res = await basic('127.0.0.4', 'svc-ng-victim', 'wrong-secret', ['-H', `X-Forwarded-For: 198.51.100.${i}`]);
      answers.push([res.status, res.body?.error]);
    }
    expect(answers).toEqual(Array(10).fill([401, 'invalid_client']));
    // Counted against 127.0.0.4, whatever the header said: the right secret is refused there...
    const there = await basic('127.0.0.4', 'svc-ng-victim', secrets.victim!, ['-H', 'X-Forwarded-For: 198.51.100.99']);
    expect([there.status, there.body?.error]).toEqual([429, 'temporarily_unavailable']);
    // ...and nowhere else.
    const elsewhere = await basic('127.0.0.5', 'svc-ng-victim', secrets.victim!);
    expect([elsewhere.status, elsewhere.body?.error]).toEqual([200, undefined]);
    const refusals = await server.logLines((l) => l.event === 'token.refused' && l.client_id === 'svc-ng-victim', 11);
    expect(new Set(refusals.map((l) => l.address))).toEqual(new Set(['127.0.0.4']));
  });

  test('failures from one address past the per-address limit block that address, not every client behind the proxy', async () => {
    const answers: unknown[] = [];
    for (let i = 0; i < ADDRESS_LIMIT; i += 1) {
      const res = await basic('127.0.0.6', `svc-guess-${i}`, 'wrong-secret');
      answers.push([res.status, res.body?.error]);
    }
    expect(answers).toEqual(Array(ADDRESS_LIMIT).fill([401, 'invalid_client']));
    const outcome = async (res: Promise<CurlResult>) => {
      const { status, body } = await res;
      return [status, body?.error];
    };
    expect(await outcome(basic('127.0.0.6', 'svc-ng', secrets.basic!))).toEqual([429, 'temporarily_unavailable']);
    expect(await outcome(basic('127.0.0.7', 'svc-ng', secrets.basic!))).toEqual([200, undefined]);
    expect(await outcome(withCert('127.0.0.7', 'svc-ng-mtls', 'svc-ng-mtls'))).toEqual([200, undefined]);
  });

  describe('Go: golang.org/x/oauth2/clientcredentials over crypto/tls, through nginx', () => {
    const goTest = testWith(goMissing);
    let goClient: string;
    let jwksAgent: Agent;

    beforeAll(async () => {
      jwksAgent = new Agent({ connect: { ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8') } });
      if (!goMissing) goClient = await buildGoClient(workspace.dir);
    }, 240_000);

    afterAll(async () => {
      await jwksAgent?.close();
    });

    /** RootCAs trust the CA of nginx's certificate; the token is verified against /jwks through nginx. */
    function goThroughNginx(clientId: string, cert: [string, string]) {
      return goToken(goClient, { tokenUrl: `https://localhost:${nginxPort}/token`, ca: join(workspace.keysDir, 'dev-ca.crt'), clientId, cert });
    }

    async function expectGoToken(clientId: string, cert: [string, string]): Promise<Record<string, unknown>> {
      const result = await goThroughNginx(clientId, cert);
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
      return expectVerified(result.stdout.trim(), { issuer: `https://localhost:${nginxPort}`, audience: API, clientId, dispatcher: jwksAgent });
    }

    goTest('self_signed_tls_client_auth with a self-signed certificate in tls.Config.Certificates', async () => {
      toolchain(goMissing);
      await expectGoToken('svc-ng-go-self', goCerts.self);
    });

    goTest('tls_client_auth with a certificate from TLS_CLIENT_CA: the token is bound to it', async () => {
      toolchain(goMissing);
      const payload = await expectGoToken('svc-ng-go-ca', goCerts.ca);
      expect(payload.cnf).toEqual({ 'x5t#S256': thumbprint(goCerts.ca[0]) });
    });

    goTest('refused: another self-signed certificate, or a self-signed one for a tls_client_auth client', async () => {
      toolchain(goMissing);
      for (const [clientId, cert] of [['svc-ng-go-self', goCerts.rogue], ['svc-ng-go-ca', goCerts.self]] as const) {
        const result = await goThroughNginx(clientId, cert);
        expect(result.code).toBe(1);
        expect(result.stderr).toMatch(/401/);
        expect(result.stderr).toMatch(/invalid_client/);
      }
    });
  });
});
