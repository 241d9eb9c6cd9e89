// `npm run bench`: our server on PostgreSQL against the bare engine and the RSA ceiling,
// measured in turns in one run. The servers are pinned to core 0 and the load generator
// (this process) to core 1 where taskset exists. Writes test/bench/results/latest.{json,md,svg}.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

import autocannon from 'autocannon';

import { ensureDevTls } from '../../src/keys/dev-tls.ts';
import { addClient, createWorkspace, freePort, ROOT, sleep, startServer, type RunningServer, type Workspace } from '../helpers/server.ts';

const API = 'https://api.bench.test';
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MEMORY_TOKENS = Number(process.env.BENCH_MEMORY_TOKENS ?? 100_000);
// The Basic / bare engine ratio again, from short runs in alternating order (ABBA): the
// machine's speed drifts within seconds here, and a pair 4 s apart shares more of it.
const PAIRS = Number(process.env.BENCH_PAIRS ?? 8);
const PAIR_SECONDS = 4;
const RESULTS = join(ROOT, 'test', 'bench', 'results');
const hasTaskset = spawnSync('taskset', ['-V']).status === 0;

// The load generator runs on core 1; the servers get core 0.
if (hasTaskset && !process.env.BENCH_PINNED && cpus().length > 1) {
  const result = spawnSync('taskset', ['-c', '1', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit', env: { ...process.env, BENCH_PINNED: '1' },
  });
  process.exit(result.status ?? 1);
}
const SERVER_CORE = hasTaskset && cpus().length > 1 ? ['taskset', '-c', '0'] : [];

process.env.TEST_DATABASE_URL ??= process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

interface Measure {
  name: string;
  requests_per_second: number;
  p50_ms: number;
  p99_ms: number;
  non_2xx: number;
  errors: number;
}

function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

async function load(name: string, options: autocannon.Options, seconds = SECONDS): Promise<Measure> {
  const result = await autocannon({ connections: CONNECTIONS, duration: seconds, ...options });
  const measure = {
    name,
    requests_per_second: Math.round(result.requests.average),
    p50_ms: result.latency.p50,
    p99_ms: result.latency.p99,
    non_2xx: result.non2xx,
    errors: result.errors,
  };
  log(`  ${name}: ${measure.requests_per_second} req/s, p50 ${measure.p50_ms} ms, p99 ${measure.p99_ms} ms${measure.non_2xx || measure.errors ? `, ${measure.non_2xx} non-2xx, ${measure.errors} errors` : ''}`);
  return measure;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function combine(name: string, rounds: Measure[]): Measure {
  return {
    name,
    requests_per_second: Math.round(median(rounds.map((r) => r.requests_per_second))),
    p50_ms: median(rounds.map((r) => r.p50_ms)),
    p99_ms: median(rounds.map((r) => r.p99_ms)),
    non_2xx: rounds.reduce((n, r) => n + r.non_2xx, 0),
    errors: rounds.reduce((n, r) => n + r.errors, 0),
  };
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024);
}

/**
 * The server's live JavaScript heap, in MB: it writes a heap snapshot on SIGUSR2 (after a
 * full garbage collection), and the snapshot's objects are summed. RSS alone cannot tell
 * growth from V8 sizing its heap up under load.
 */
async function liveHeapMb(pid: number, dir: string): Promise<number> {
  const isSnapshot = (name: string) => name.endsWith('.heapsnapshot');
  const before = new Set(readdirSync(dir).filter(isSnapshot));
  process.kill(pid, 'SIGUSR2');
  for (let waited = 0; waited < 120_000; waited += 500) {
    await sleep(500);
    const name = readdirSync(dir).find((n) => isSnapshot(n) && !before.has(n));
    if (!name) continue;
    const file = join(dir, name);
    const size = statSync(file).size;
    await sleep(1000);
    if (statSync(file).size !== size) continue;
    // A loaded machine can pause the writer for longer than a second: a file that does not
    // parse yet is still being written.
    let snapshot: { snapshot: { meta: { node_fields: string[] } }; nodes: number[] };
    try {
      snapshot = JSON.parse(readFileSync(file, 'utf8')) as typeof snapshot;
    } catch {
      continue;
    }
    rmSync(file);
    const fields = snapshot.snapshot.meta.node_fields;
    const selfSize = fields.indexOf('self_size');
    let bytes = 0;
    for (let i = selfSize; i < snapshot.nodes.length; i += fields.length) bytes += snapshot.nodes[i]!;
    return Math.round(bytes / 2 ** 20 * 10) / 10;
  }
  throw new Error('the server wrote no heap snapshot within 120 s');
}

async function startBaseline(keysDir: string): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const [command, ...args] = [...SERVER_CORE, process.execPath, join(ROOT, 'test', 'bench', 'baseline.ts'), String(port), keysDir, API];
  const child = spawn(command!, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((done) => child.stdout!.once('data', () => done()));
  return { port, child };
}

function basicHeader(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const GRANT = 'grant_type=client_credentials';

/** The federated client's cluster: a Kubernetes issuer registered with a static JWKS. */
const CLUSTER = { issuer: 'https://kubernetes.default.svc.cluster.local', subject: 'system:serviceaccount:bench:api', kid: 'bench-cluster-1' };

/** Pre-signed, unique client assertions (signing them is the client's cost, not ours). */
function assertions(count: number, clientId: string, audience: string, keyPem: string, alg: 'ES256' | 'RS256', kid?: string): string[] {
  const key = createPrivateKey(keyPem);
  const header = Buffer.from(JSON.stringify({ alg, typ: 'JWT', ...(kid ? { kid } : {}) })).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  return Array.from({ length: count }, () => {
    // A federated token is the cluster's service-account token: its iss and sub are the cluster's.
    const claims = kid
      ? { iss: CLUSTER.issuer, sub: CLUSTER.subject, aud: audience, jti: randomUUID(), iat: now, exp: now + 290, 'kubernetes.io': { namespace: 'bench', serviceaccount: { name: 'api' } } }
      : { iss: clientId, sub: clientId, aud: audience, jti: randomUUID(), iat: now, exp: now + 290 };
    const input = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
    return `${input}.${sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  });
}

/** Pre-signed, unique DPoP proofs for POST `htu` with one key (the client's cost): ES256 or RS256. */
function dpopProofs(count: number, htu: string, key: { privateKey: KeyObject; publicKey: KeyObject }): string[] {
  const alg = key.publicKey.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256';
  const header = Buffer.from(JSON.stringify({ typ: 'dpop+jwt', alg, jwk: key.publicKey.export({ format: 'jwk' }) })).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  return Array.from({ length: count }, () => {
    const input = `${header}.${Buffer.from(JSON.stringify({ htm: 'POST', htu, jti: randomUUID(), iat })).toString('base64url')}`;
    return `${input}.${sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  });
}

async function setup(): Promise<{ workspace: Workspace; secrets: Record<string, string>; jwtKeys: Record<'ES256' | 'RS256', string>; mtls: { cert: string; key: string } }> {
  // The default limits: the bench measures the product as it ships.
  const workspace = await createWorkspace({ LOG_LEVEL: 'info' });
  await ensureDevTls(workspace.keysDir);
  const secrets: Record<string, string> = {};
  // An hour: the tokens introspected in the last round were issued before the first.
  secrets.basic = (await addClient(workspace, 'bench-basic', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'read write', '--ttl', '3600'])).client_secret!;
  secrets.rs = (await addClient(workspace, 'bench-rs', ['--auth', 'client_secret_basic', '--audience', 'https://unused.bench.test', '--introspect', API])).client_secret!;
  const keyFile = join(workspace.dir, 'bench-jwt.key');
  await addClient(workspace, 'bench-jwt', ['--auth', 'private_key_jwt', '--generate-key', keyFile, '--audience', API, '--scope', 'read write']);
  // The same method with RSA assertions, which many clients send (and which cost the server
  // a fraction of a P-256 verification).
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const rsaJwks = join(workspace.dir, 'bench-jwt-rs.jwks');
  writeFileSync(rsaJwks, JSON.stringify({ keys: [{ ...rsa.publicKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig' }] }));
  await addClient(workspace, 'bench-jwt-rs', ['--auth', 'private_key_jwt', '--jwks', rsaJwks, '--audience', API, '--scope', 'read write']);
  // Federated: a Kubernetes service-account token (RS256, as clusters sign them), keys static.
  const clusterJwks = join(workspace.dir, 'bench-cluster.jwks');
  writeFileSync(clusterJwks, JSON.stringify({ keys: [{ ...rsa.publicKey.export({ format: 'jwk' }), kid: CLUSTER.kid, alg: 'RS256', use: 'sig' }] }));
  const cluster = await workspace.cli('issuer', ['add', 'bench-cluster', '--kind', 'kubernetes', '--issuer', CLUSTER.issuer, '--jwks', clusterJwks]);
  if (cluster.code !== 0) throw new Error(cluster.stderr);
  await addClient(workspace, 'bench-fed', ['--auth', 'federated', '--issuer', 'bench-cluster', '--subject', CLUSTER.subject, '--audience', API, '--scope', 'read write']);
  const certDir = join(workspace.dir, 'certs');
  const issued = await workspace.cli('client', ['cert', 'bench-mtls', '--out', certDir, '--json']);
  if (issued.code !== 0) throw new Error(issued.stderr);
  await addClient(workspace, 'bench-mtls', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=bench-mtls', '--audience', API, '--scope', 'read write']);
  return {
    workspace,
    secrets,
    jwtKeys: { ES256: readFileSync(keyFile, 'utf8'), RS256: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string },
    mtls: { cert: readFileSync(join(certDir, 'bench-mtls.crt'), 'utf8'), key: readFileSync(join(certDir, 'bench-mtls.key'), 'utf8') },
  };
}

/** Basic clients the overload runs spread their requests over. */
const OVERLOAD_CLIENTS = 8;
const OVERLOAD_SECONDS = Number(process.env.BENCH_OVERLOAD_SECONDS ?? 20);
/** Under one process's MAX_CONNECTIONS_PER_ADDRESS (256): every connection comes from 127.0.0.1. */
const OVERLOAD_CONNECTIONS = 250;
/** A caller that has waited this long has given up (seconds), as the issue's measurement did. */
const CLIENT_TIMEOUT = 10;

interface OverloadMeasure {
  name: string;
  /** Tokens/s with 16 connections, closed loop: what the server answers at best. */
  capacity: number;
  /** The rate offered in the overload run: 3 × capacity. */
  offered: number;
  /** Tokens/s (200s) during it. */
  goodput: number;
  goodput_vs_capacity: number;
  /** p99 of the 200s only (ms): the refusals are fast and would hide the waits. */
  p99_ok_ms: number;
  shed_503: number;
  other_non_2xx: number;
  errors_or_timeouts: number;
}

/**
 * Capacity with a closed loop, then 3 × capacity offered as a fixed rate (open loop) over
 * many connections for OVERLOAD_SECONDS. Requests go over OVERLOAD_CLIENTS client ids:
 * today's brute-force limits count per client id too (the bench raises them for now), and
 * spread over several ids they cannot take part in the result.
 */
async function overloadRun(name: string, url: string, auths: string[], tls: { ca: Buffer }): Promise<OverloadMeasure> {
  let next = 0;
  const requests = [{ method: 'POST' as const, body: GRANT, setupRequest: (request: autocannon.Request) => ({ ...request, headers: { ...FORM, authorization: auths[next++ % auths.length]! } }) }];
  await autocannon({ url, tlsOptions: tls, requests, connections: CONNECTIONS, duration: 3 });
  const capacityRun = await autocannon({ url, tlsOptions: tls, requests, connections: CONNECTIONS, duration: SECONDS });
  const capacity = Math.round(capacityRun['2xx'] / SECONDS);
  const offered = 3 * capacity;
  const okTimes: number[] = [];
  const statuses = new Map<number, number>();
  const result = await new Promise<autocannon.Result>((done, fail) => {
    const instance = autocannon({
      url, tlsOptions: tls, requests, connections: OVERLOAD_CONNECTIONS, overallRate: offered, duration: OVERLOAD_SECONDS, timeout: CLIENT_TIMEOUT,
    }, (err, finished) => (err ? fail(err) : done(finished)));
    instance.on('response', (_client, status, _bytes, ms) => {
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      if (status === 200) okTimes.push(ms);
    });
  });
  okTimes.sort((a, b) => a - b);
  const ok = statuses.get(200) ?? 0;
  const shed = statuses.get(503) ?? 0;
  const measure: OverloadMeasure = {
    name,
    capacity,
    offered,
    goodput: Math.round(ok / OVERLOAD_SECONDS),
    goodput_vs_capacity: Math.round((ok / OVERLOAD_SECONDS / capacity) * 100) / 100,
    p99_ok_ms: okTimes.length ? Math.round(okTimes[Math.min(okTimes.length - 1, Math.floor(okTimes.length * 0.99))]!) : 0,
    shed_503: shed,
    other_non_2xx: [...statuses].reduce((n, [status, count]) => n + (status !== 200 && status !== 503 ? count : 0), 0),
    errors_or_timeouts: result.errors + result.timeouts,
  };
  log(`  ${name}: capacity ${capacity}/s; at ${offered}/s offered: goodput ${measure.goodput}/s (${measure.goodput_vs_capacity} × capacity), p99 of the 200s ${measure.p99_ok_ms} ms, ${shed} × 503, ${measure.other_non_2xx} other non-2xx, ${measure.errors_or_timeouts} errors or timeouts`);
  return measure;
}

/** The overload runs: one pinned process, then WORKERS=2 on every core. */
async function overloadRuns(workspace: Workspace, tls: { ca: Buffer }): Promise<OverloadMeasure[]> {
  log(`overload: capacity, then 3 × capacity for ${OVERLOAD_SECONDS} s over ${OVERLOAD_CONNECTIONS} connections (client timeout ${CLIENT_TIMEOUT} s)`);
  const auths: string[] = [];
  for (let i = 0; i < OVERLOAD_CLIENTS; i += 1) {
    const id = `bench-overload-${i}`;
    auths.push(basicHeader(id, (await addClient(workspace, id, ['--auth', 'client_secret_basic', '--audience', API])).client_secret!));
  }
  const measures: OverloadMeasure[] = [];
  const only = process.env.BENCH_OVERLOAD_RUNS ?? 'one,two';
  // BENCH_MAX_IN_FLIGHT: try another limit than the default.
  const limit: Record<string, string> = process.env.BENCH_MAX_IN_FLIGHT ? { MAX_IN_FLIGHT: process.env.BENCH_MAX_IN_FLIGHT } : {};
  const one = await startServer(workspace, limit, { prefix: SERVER_CORE, discardOutput: true });
  try {
    if (only.includes('one')) measures.push(await overloadRun('one process', `${one.issuer}/token`, auths, tls));
  } finally {
    await one.stop();
  }
  const allCores = hasTaskset ? ['taskset', '-c', `0-${cpus().length - 1}`] : [];
  const two = await startServer(workspace, { ...limit, WORKERS: '2' }, { prefix: allCores, discardOutput: true });
  try {
    if (only.includes('two')) measures.push(await overloadRun('WORKERS=2 (the load generator shares core 1)', `${two.issuer}/token`, auths, tls));
  } finally {
    await two.stop();
  }
  return measures;
}

async function main(): Promise<void> {
  log(`m2m-oauth-server benchmark: ${CONNECTIONS} connections, ${SECONDS} s per run, ${ROUNDS} rounds in turns${hasTaskset ? ', servers on core 0, load on core 1' : ', unpinned (no taskset)'}`);
  const { workspace, secrets, jwtKeys, mtls } = await setup();
  const ca = readFileSync(join(workspace.keysDir, 'dev-ca.crt'));
  const results: Record<string, unknown> = {};
  // BENCH_ONLY=overload: the overload runs alone (results/overload.json).
  if (process.env.BENCH_ONLY === 'overload') {
    try {
      const overload = await overloadRuns(workspace, { ca });
      writeFileSync(join(RESULTS, 'overload.json'), `${JSON.stringify({ date: new Date().toISOString(), machine: machineInfo(), overload }, null, 2)}\n`);
      process.stdout.write(overloadTable(overload));
    } finally {
      await workspace.remove();
    }
    return;
  }

  log('RSA-2048 ceiling on the server core');
  const ceilingOut = execFileSync(SERVER_CORE[0] ?? process.execPath, [...SERVER_CORE.slice(1), ...(SERVER_CORE.length ? [process.execPath] : []), join(ROOT, 'test', 'bench', 'rsa-ceiling.ts'), '3'], { encoding: 'utf8' });
  const ceiling = JSON.parse(ceilingOut) as Report['ceiling'];
  log(`  ${ceiling.signatures_per_second} signatures/s, ${ceiling.jwts_per_second} complete JWTs/s; verifications/s: ES256 ${ceiling.verifications_per_second.ES256}, RS256 ${ceiling.verifications_per_second.RS256}`);

  const baseline = await startBaseline(workspace.keysDir);
  let ours: RunningServer | undefined = await startServer(workspace, { NODE_OPTIONS: '--heapsnapshot-signal=SIGUSR2' }, { prefix: SERVER_CORE, discardOutput: true });
  const tls = { ca };
  try {
    const oursUrl = `${ours.issuer}/token`;
    const baselineUrl = `https://localhost:${baseline.port}/token`;
    const basicRun = (url: string, auth: string) => ({
      url, method: 'POST' as const, headers: { ...FORM, authorization: auth }, body: GRANT, tlsOptions: tls,
    });
    const oursAuth = basicHeader('bench-basic', secrets.basic!);
    const baselineAuth = basicHeader('bench', 'bench-secret-bench-secret-bench-secret');
    const oursBasic = basicRun(oursUrl, oursAuth);
    const baselineBasic = basicRun(baselineUrl, baselineAuth);
    // Warm both up (JIT, connection set-up, caches) before anything counts.
    await autocannon({ ...oursBasic, connections: CONNECTIONS, duration: 5 });
    await autocannon({ ...baselineBasic, connections: CONNECTIONS, duration: 5 });

    // Introspection asks about many distinct tokens, as resource APIs do, not one over and over.
    const tokens: string[] = [];
    for (let i = 0; i < 256; i += 1) {
      tokens.push(((await ours.post('/token', { grant_type: 'client_credentials' }, { basic: ['bench-basic', secrets.basic!] })).body as { access_token: string }).access_token);
    }
    let nextToken = 0;

    const jwtRun = (name: string, clientId: string, alg: 'ES256' | 'RS256', kid?: string) => () => {
      // Fresh each round: an assertion may live 300 s at most. More than a run can use, so
      // none is sent twice (a replay would be refused, and cheaper; a federated token may be
      // sent again, but distinct ones cost the same as private_key_jwt's to parse).
      const pool = assertions(Math.ceil(SECONDS * 3000), clientId, ours!.issuer, jwtKeys[alg], alg, kid);
      let next = 0;
      return load(name, {
        url: oursUrl, tlsOptions: tls,
        requests: [{
          method: 'POST', headers: FORM,
          setupRequest: (request) => ({
            ...request,
            body: `${GRANT}&client_assertion_type=${encodeURIComponent('urn:ietf:params:oauth:client-assertion-type:jwt-bearer')}&client_assertion=${pool[next++]}`,
          }),
        }],
      });
    };
    const dpopKeys = { ES256: generateKeyPairSync('ec', { namedCurve: 'P-256' }), RS256: generateKeyPairSync('rsa', { modulusLength: 2048 }) };
    // Basic with a DPoP proof: fresh each round (a proof is good for 60 s), never one twice.
    const dpopRun = (alg: keyof typeof dpopKeys) => () => {
      const pool = dpopProofs(Math.ceil(SECONDS * 3000), oursUrl, dpopKeys[alg]);
      let next = 0;
      return load(`ours, Basic + DPoP (${alg} proof)`, {
        url: oursUrl, tlsOptions: tls,
        requests: [{ method: 'POST', body: GRANT, setupRequest: (request) => ({ ...request, headers: { ...FORM, authorization: oursAuth, dpop: pool[next++]! } }) }],
      });
    };
    const rounds: Record<'base' | 'basic' | 'dpop' | 'dpopRs' | 'jwt' | 'jwtRs' | 'federated' | 'mtls' | 'jwks' | 'introspection', Measure[]> = { base: [], basic: [], dpop: [], dpopRs: [], jwt: [], jwtRs: [], federated: [], mtls: [], jwks: [], introspection: [] };
    const runs: Record<keyof typeof rounds, () => Promise<Measure>> = {
      base: () => load('bare engine, Basic', baselineBasic),
      basic: () => load('ours, Basic', oursBasic),
      dpop: dpopRun('ES256'),
      dpopRs: dpopRun('RS256'),
      jwt: jwtRun('ours, private_key_jwt (ES256)', 'bench-jwt', 'ES256'),
      jwtRs: jwtRun('ours, private_key_jwt (RS256)', 'bench-jwt-rs', 'RS256'),
      federated: jwtRun('ours, federated (Kubernetes token, RS256)', 'bench-fed', 'RS256', CLUSTER.kid),
      mtls: () => load('ours, tls_client_auth (keep-alive)', {
        url: oursUrl, method: 'POST', headers: FORM, body: `${GRANT}&client_id=bench-mtls`, tlsOptions: { ca, cert: mtls.cert, key: mtls.key },
      }),
      jwks: () => load('ours, GET /jwks', { url: `${ours!.issuer}/jwks`, tlsOptions: tls }),
      introspection: () => load('ours, introspection', {
        url: `${ours!.issuer}/token/introspection`, tlsOptions: tls,
        requests: [{
          method: 'POST', headers: { ...FORM, authorization: basicHeader('bench-rs', secrets.rs!) },
          setupRequest: (request) => ({ ...request, body: `token=${tokens[nextToken++ % tokens.length]}` }),
        }],
      }),
    };
    const order: (keyof typeof rounds)[] = ['base', 'basic', 'dpop', 'dpopRs', 'jwt', 'jwtRs', 'federated', 'mtls', 'jwks', 'introspection'];
    for (let round = 1; round <= ROUNDS; round += 1) {
      log(`round ${round}`);
      // Each round starts with a different run, so none gains from the order; ratios are
      // taken within a round, where the machine is the same.
      for (let i = 0; i < order.length; i += 1) {
        const name = order[(i + round - 1) % order.length]!;
        rounds[name].push(await runs[name]());
      }
    }
    const base = combine('bare engine, Basic', rounds.base);
    const basic = combine('ours, Basic', rounds.basic);
    const dpop = combine('ours, Basic + DPoP (ES256 proof)', rounds.dpop);
    const dpopRs = combine('ours, Basic + DPoP (RS256 proof)', rounds.dpopRs);
    const jwt = combine('ours, private_key_jwt (ES256)', rounds.jwt);
    const jwtRs = combine('ours, private_key_jwt (RS256)', rounds.jwtRs);
    const federated = combine('ours, federated (Kubernetes token, RS256)', rounds.federated);
    const mtlsRun = combine('ours, tls_client_auth (keep-alive)', rounds.mtls);
    // Every token introspected was active to the end (an inactive answer is cheaper).
    for (const token of [tokens[0]!, tokens[tokens.length - 1]!]) {
      const answer = await ours.post('/token/introspection', { token }, { basic: ['bench-rs', secrets.rs!] });
      if ((answer.body as { active?: boolean }).active !== true) throw new Error('an introspected token was not active');
    }
    const jwks = combine('ours, GET /jwks', rounds.jwks);
    const introspection = combine('ours, introspection', rounds.introspection);
    const perRound = (a: Measure[], b: Measure[], pick: (m: Measure) => number) => median(a.map((m, i) => pick(m) / pick(b[i]!)));

    log(`Basic and the bare engine in ${PAIRS} alternating pairs of ${PAIR_SECONDS} s`);
    const pairRatios: number[] = [];
    const measureBase = async () => (await load('  bare engine, Basic', baselineBasic, PAIR_SECONDS)).requests_per_second;
    const measureOurs = async () => (await load('  ours, Basic', oursBasic, PAIR_SECONDS)).requests_per_second;
    for (let pair = 0; pair < PAIRS; pair += 1) {
      let baseRps: number;
      let oursRps: number;
      if (pair % 2) {
        oursRps = await measureOurs();
        baseRps = await measureBase();
      } else {
        baseRps = await measureBase();
        oursRps = await measureOurs();
      }
      pairRatios.push(oursRps / baseRps);
    }

    log('other endpoints');
    const mtlsReconnect = await load('ours, tls_client_auth (new connection every 20 requests)', {
      url: oursUrl, method: 'POST', headers: FORM, body: `${GRANT}&client_id=bench-mtls`, reconnectRate: 20, tlsOptions: { ca, cert: mtls.cert, key: mtls.key },
    });

    log(`memory: ${MEMORY_TOKENS} tokens`);
    const pid = ours.process.pid!;
    const idleRss = rssMb(pid);
    const warm = Math.min(20_000, MEMORY_TOKENS / 5);
    await autocannon({ ...oursBasic, connections: CONNECTIONS, amount: warm });
    const rssAfterWarm = rssMb(pid);
    let peakRss = rssAfterWarm;
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, rssMb(pid)); }, 500);
    await autocannon({ ...oursBasic, connections: CONNECTIONS, amount: MEMORY_TOKENS - warm });
    clearInterval(sampler);
    const rssAfterAll = rssMb(pid);
    log(`  RSS idle ${idleRss} MB, after ${warm} tokens ${rssAfterWarm} MB, after ${MEMORY_TOKENS} ${rssAfterAll} MB, peak ${peakRss} MB`);
    // Then the live heap, before and after as many tokens again (a snapshot's own buffers
    // raise RSS, so this comes after the RSS readings).
    const heapBefore = await liveHeapMb(pid, workspace.dir);
    await autocannon({ ...oursBasic, connections: CONNECTIONS, amount: MEMORY_TOKENS });
    const heapAfter = await liveHeapMb(pid, workspace.dir);
    log(`  live heap ${heapBefore} MB, and ${heapAfter} MB after ${MEMORY_TOKENS} more tokens`);
    await ours.stop();
    ours = undefined;
    baseline.child.kill();

    log('WORKERS=2 on both cores (the load generator shares core 1)');
    // Children inherit this process's pinning to core 1: give the workers every core back.
    const allCores = hasTaskset ? ['taskset', '-c', `0-${cpus().length - 1}`] : [];
    const two = await startServer(workspace, { WORKERS: '2' }, { discardOutput: true, prefix: allCores });
    const twoBasic = basicRun(`${two.issuer}/token`, oursAuth);
    await autocannon({ ...twoBasic, connections: CONNECTIONS, duration: 2 });
    const twoWorkers = await load('ours, Basic, WORKERS=2', twoBasic);
    await two.stop();

    const overload = await overloadRuns(workspace, tls);

    const round2 = (x: number) => Math.round(x * 100) / 100;
    const ratio = (a: number, b: number) => round2(a / b);
    Object.assign(results, {
      date: new Date().toISOString(),
      machine: machineInfo(),
      settings: { connections: CONNECTIONS, seconds_per_run: SECONDS, rounds: ROUNDS, pairs: PAIRS, seconds_per_pair_run: PAIR_SECONDS },
      ceiling,
      runs: { base, basic, dpop, dpop_rs256: dpopRs, jwt, jwt_rs256: jwtRs, federated, mtls: mtlsRun, mtls_reconnect: mtlsReconnect, jwks, introspection, two_workers: twoWorkers, rounds },
      basic_vs_baseline_pairs: pairRatios.map(round2),
      // Throughput ratios: the median of the ratios within each round (or each pair).
      ratios: {
        basic_vs_baseline: round2(perRound(rounds.basic, rounds.base, (m) => m.requests_per_second)),
        basic_vs_baseline_paired: round2(median(pairRatios)),
        basic_vs_rsa_ceiling: ratio(basic.requests_per_second, ceiling.signatures_per_second),
        p99_vs_baseline: round2(perRound(rounds.basic, rounds.base, (m) => m.p99_ms)),
        dpop_vs_basic: round2(perRound(rounds.dpop, rounds.basic, (m) => m.requests_per_second)),
        dpop_rs256_vs_basic: round2(perRound(rounds.dpopRs, rounds.basic, (m) => m.requests_per_second)),
        // The most DPoP / Basic could be if a proof cost nothing but its signature check:
        // one Basic token's time plus one verification's, on the server core.
        dpop_vs_basic_verification_bound: round2(1 / (1 + basic.requests_per_second / ceiling.verifications_per_second.ES256)),
        dpop_rs256_vs_basic_verification_bound: round2(1 / (1 + basic.requests_per_second / ceiling.verifications_per_second.RS256)),
        private_key_jwt_vs_basic: round2(perRound(rounds.jwt, rounds.basic, (m) => m.requests_per_second)),
        private_key_jwt_rs256_vs_basic: round2(perRound(rounds.jwtRs, rounds.basic, (m) => m.requests_per_second)),
        federated_vs_private_key_jwt_rs256: round2(perRound(rounds.federated, rounds.jwtRs, (m) => m.requests_per_second)),
        mtls_vs_basic: round2(perRound(rounds.mtls, rounds.basic, (m) => m.requests_per_second)),
        jwks_vs_rsa_ceiling: ratio(jwks.requests_per_second, ceiling.signatures_per_second),
        introspection_vs_rsa_ceiling: ratio(introspection.requests_per_second, ceiling.signatures_per_second),
        two_workers_vs_one: ratio(twoWorkers.requests_per_second, basic.requests_per_second),
      },
      overload,
      memory_mb: { idle: idleRss, after_warmup: rssAfterWarm, after_all: rssAfterAll, peak: peakRss, tokens: MEMORY_TOKENS, warmup_tokens: warm, live_heap_before: heapBefore, live_heap_after: heapAfter },
    });
  } finally {
    baseline.child.kill();
    await ours?.stop();
    await workspace.remove();
  }
  writeReports(results as unknown as Report);
}

interface Report {
  date: string;
  machine: { cpu: string; cores: number; memory_gb: number; node: string; pinned: boolean };
  settings: { connections: number; seconds_per_run: number; rounds: number; pairs: number; seconds_per_pair_run: number };
  ceiling: { signatures_per_second: number; jwts_per_second: number; verifications_per_second: { ES256: number; RS256: number } };
  runs: Record<'base' | 'basic' | 'dpop' | 'dpop_rs256' | 'jwt' | 'jwt_rs256' | 'federated' | 'mtls' | 'mtls_reconnect' | 'jwks' | 'introspection' | 'two_workers', Measure> & { rounds: unknown };
  ratios: Record<string, number>;
  memory_mb: Record<string, number>;
  overload: OverloadMeasure[];
}

function machineInfo(): Report['machine'] {
  return { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memory_gb: Math.round(totalmem() / 2 ** 30), node: process.version, pinned: hasTaskset };
}

function overloadTable(runs: OverloadMeasure[]): string {
  return [
    `Overload: 3 × capacity offered for ${OVERLOAD_SECONDS} s over ${OVERLOAD_CONNECTIONS} connections, client timeout ${CLIENT_TIMEOUT} s.`,
    '',
    '| run | capacity tokens/s | offered/s | goodput tokens/s | goodput / capacity | p99 of the 200s ms | 503 | other non-2xx | errors, timeouts |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...runs.map((r) => `| ${r.name} | ${r.capacity} | ${r.offered} | ${r.goodput} | ${r.goodput_vs_capacity} | ${r.p99_ok_ms} | ${r.shed_503} | ${r.other_non_2xx} | ${r.errors_or_timeouts} |`),
    '',
  ].join('\n');
}

function writeReports(report: Report): void {
  const { runs, ratios, memory_mb: memory, ceiling, machine, settings } = report;
  const rows = [runs.base, runs.basic, runs.dpop, runs.dpop_rs256, runs.jwt, runs.jwt_rs256, runs.federated, runs.mtls, runs.mtls_reconnect, runs.jwks, runs.introspection, runs.two_workers];
  const md = [
    `Measured ${report.date.slice(0, 10)} on ${machine.cores} × ${machine.cpu}, ${machine.memory_gb} GiB, Node ${machine.node}; `
      + `${machine.pinned ? 'server on core 0, load generator on core 1' : 'unpinned'}; ${settings.connections} connections, `
      + `${settings.seconds_per_run} s per run after a 5 s warm-up; the bare engine, Basic, Basic with a DPoP proof (ES256 and RS256 keys), private_key_jwt (ES256 and RS256 assertions), federated (a Kubernetes token, RS256), mTLS, /jwks and introspection (256 distinct tokens) run in turn in ${settings.rounds} rounds (medians shown); PostgreSQL on the same machine.`,
    '',
    '| run | requests/s | p50 ms | p99 ms | non-2xx |',
    '|---|---:|---:|---:|---:|',
    `| RSA-2048 ceiling (signatures/s on one core; complete JWTs/s: ${ceiling.jwts_per_second}) | ${ceiling.signatures_per_second} | | | |`,
    `| signature checks/s on that core: P-256 (ES256) ${ceiling.verifications_per_second.ES256}, RSA-2048 (RS256) ${ceiling.verifications_per_second.RS256} | | | | |`,
    ...rows.map((r) => `| ${r.name} | ${r.requests_per_second} | ${r.p50_ms} | ${r.p99_ms} | ${r.non_2xx + r.errors} |`),
    '',
    `Ratios (within each round, median): Basic / bare engine **${ratios.basic_vs_baseline}** (from ${settings.pairs} alternating pairs of ${settings.seconds_per_pair_run} s runs: **${ratios.basic_vs_baseline_paired}**), p99 / bare engine ${ratios.p99_vs_baseline}, `
      + `DPoP / Basic **${ratios.dpop_vs_basic}** with ES256 proofs and **${ratios.dpop_rs256_vs_basic}** with RS256 ones (${ratios.dpop_vs_basic_verification_bound} and ${ratios.dpop_rs256_vs_basic_verification_bound} if a proof cost only its signature check at the tight-loop rate above; inside the server it costs more: docs/performance.md), `
      + `private_key_jwt / Basic ${ratios.private_key_jwt_vs_basic} with ES256 assertions and ${ratios.private_key_jwt_rs256_vs_basic} with RS256, `
      + `federated / private_key_jwt (RS256) ${ratios.federated_vs_private_key_jwt_rs256}, mTLS / Basic ${ratios.mtls_vs_basic}. `
      + `Basic / RSA ceiling **${ratios.basic_vs_rsa_ceiling}**, /jwks / RSA ceiling ${ratios.jwks_vs_rsa_ceiling}, introspection / RSA ceiling ${ratios.introspection_vs_rsa_ceiling}, `
      + `WORKERS=2 / one pinned worker ${ratios.two_workers_vs_one}.`,
    `Memory (RSS): idle ${memory.idle} MB, after ${memory.warmup_tokens} tokens ${memory.after_warmup} MB, after ${memory.tokens} tokens ${memory.after_all} MB (peak ${memory.peak} MB). `
      + `Live JavaScript heap (after a full collection): ${memory.live_heap_before} MB, then ${memory.live_heap_after} MB after ${memory.tokens} more tokens.`,
    '',
    overloadTable(report.overload),
  ].join('\n');
  writeFileSync(join(RESULTS, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(RESULTS, 'latest.md'), md);
  writeFileSync(join(RESULTS, 'latest.svg'), chart([{ name: 'RSA-2048 ceiling (signatures/s)', requests_per_second: ceiling.signatures_per_second } as Measure, ...rows]));
  process.stdout.write(md);
}

function chart(rows: Pick<Measure, 'name' | 'requests_per_second'>[]): string {
  const width = 760;
  const barArea = 420;
  const rowHeight = 26;
  const max = Math.max(...rows.map((r) => r.requests_per_second));
  const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const bars = rows.map((r, i) => {
    const y = 30 + i * rowHeight;
    const w = Math.max(1, Math.round((r.requests_per_second / max) * barArea));
    return `<text x="300" y="${y + 15}" text-anchor="end">${escape(r.name)}</text>`
      + `<rect x="310" y="${y + 3}" width="${w}" height="16" fill="${r.name.startsWith('ours') ? '#2f6fdd' : '#999'}"/>`
      + `<text x="${316 + w}" y="${y + 15}">${r.requests_per_second}</text>`;
  }).join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${40 + rows.length * rowHeight}" font-family="sans-serif" font-size="12">
<text x="10" y="18" font-weight="bold">Requests per second, one server core (higher is better)</text>
${bars}
</svg>
`;
}

await main();
