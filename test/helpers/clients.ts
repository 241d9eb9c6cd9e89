// Real clients from other ecosystems, shared by the tests that run them (test/clients.test.ts
// directly, test/nginx.test.ts through the README's nginx): the Go client in test/clients/go
// built from Debian's packages, the toolchain skip/fail rule, and token verification against
// /jwks as a resource server does it.
import { execFile, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { createRemoteJWKSet, customFetch, jwtVerify } from 'jose';
import { fetch as undiciFetch, type Agent } from 'undici';

import { ROOT } from './server.ts';

const GOPATH = '/usr/share/gocode';
// Outside CI a machine without a toolchain skips the tests that need it; CI must have them.
const IN_CI = process.env.CI === 'true';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(command: string, args: string[], env?: Record<string, string>): Promise<RunResult> {
  return new Promise((done) => {
    execFile(command, args, { cwd: ROOT, env: { ...process.env, ...env }, timeout: 120_000 }, (err, stdout, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** What is missing to build the Go client, or undefined. */
export function missingGo(): string | undefined {
  const go = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (go.status !== 0) return 'the Go toolchain (apt-get install golang-go)';
  if (!existsSync(join(GOPATH, 'src/golang.org/x/oauth2/clientcredentials'))) return 'golang.org/x/oauth2 (apt-get install golang-golang-x-oauth2-dev)';
  return undefined;
}

/** A test that needs a toolchain: skipped with a message outside CI, failing in CI. */
export function testWith(missing: string | undefined): jest.It {
  if (!missing || IN_CI) return test;
  console.warn(`SKIPPED: ${missing} is not installed; CI=true makes these tests fail instead`);
  return test.skip;
}

export function toolchain(missing: string | undefined): void {
  if (missing) throw new Error(`${missing} is not installed`);
}

/** Builds test/clients/go into `dir`; returns the binary. */
export async function buildGoClient(dir: string): Promise<string> {
  // Built from source each run: the tests exercise what Debian's packages compile today.
  const binary = join(dir, 'm2m-go-client');
  const build = await run('go', ['build', '-o', binary, './test/clients/go'], { GO111MODULE: 'off', GOPATH, GOFLAGS: '' });
  if (build.code !== 0) throw new Error(`go build: ${build.stderr}`);
  return binary;
}

/** A token request by the Go client; `ca` is what its tls.Config.RootCAs trusts. */
export function goToken(binary: string, options: { tokenUrl: string; ca: string; clientId: string; secret?: string; cert?: [string, string] }): Promise<RunResult> {
  return run(binary, [
    '-token-url', options.tokenUrl, '-ca', options.ca, '-client-id', options.clientId,
    ...(options.secret ? ['-secret', options.secret] : []),
    ...(options.cert ? ['-cert', options.cert[0], '-key', options.cert[1]] : []),
  ]);
}

async function openssl(args: string[]): Promise<void> {
  const result = await run('openssl', args);
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
}

/** A self-signed EC P-256 client certificate in `dir`; returns [certFile, keyFile]. */
export async function selfSigned(dir: string, name: string): Promise<[string, string]> {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', keyFile, '-out', certFile, '-subj', `/CN=${name}`, '-addext', 'extendedKeyUsage=clientAuth']);
  return [certFile, keyFile];
}

/** Verifies an access token as a resource server would: against `<issuer>/jwks`, fetched over HTTPS through `dispatcher`. */
export async function expectVerified(token: string, options: { issuer: string; audience: string; clientId: string; dispatcher: Agent }): Promise<Record<string, unknown>> {
  const { issuer, audience, clientId, dispatcher } = options;
  const jwks = createRemoteJWKSet(new URL(`${issuer}/jwks`), {
    [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher }) as unknown as Promise<Response>,
  });
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience, typ: 'at+jwt', algorithms: ['RS256'] });
  expect(protectedHeader.alg).toBe('RS256');
  expect(payload).toMatchObject({ sub: clientId, client_id: clientId, aud: audience });
  return payload;
}
