// Starts the real server (`node src/main.ts`) on a real port, with its own migrations
// folder, keys folder and database: embedded PGlite, or a database of its own on the server
// named by TEST_DATABASE_URL, either one holding the project's migrations already (copied
// from the run's template, see template.ts) unless the test asks for an empty one. Tests
// talk HTTPS to it like any client would.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { Agent, fetch as undiciFetch, type RequestInit, type Response } from 'undici';

import { NODE, nodeFlags } from './node.ts';
import { adminQuery, copyMigrations, currentTemplate, databaseUrl as urlOf, nodeEnv } from './template.ts';

export const ROOT = resolve(import.meta.dirname, '..', '..');

export async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => done(port));
    });
  });
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Workspace {
  dir: string;
  migrationsDir: string;
  keysDir: string;
  dataDir: string;
  databaseUrl: string | undefined;
  env: Record<string, string>;
  /** Runs `node src/cli/<script>.ts args…` against this workspace. */
  cli(script: 'client' | 'keys' | 'migrate' | 'issuer', args: string[], extraEnv?: Record<string, string>): Promise<CommandResult>;
  /** Drops the workspace's database (PostgreSQL) and deletes its folder. */
  remove(): Promise<void>;
}

export interface WorkspaceOptions {
  /**
   * A database with no tables (embedded: no data directory until a process makes one), for
   * tests of migrating one or of what a refused start leaves behind; otherwise the template's copy.
   */
  emptyDatabase?: boolean;
}

async function createDatabase(adminUrl: string, template: string | undefined): Promise<string> {
  const name = `m2m_test_${randomBytes(6).toString('hex')}`;
  await adminQuery(adminUrl, `CREATE DATABASE ${name}${template ? ` TEMPLATE ${template}` : ''}`);
  return urlOf(adminUrl, name);
}

export async function createWorkspace(settings: Record<string, string> = {}, options: WorkspaceOptions = {}): Promise<Workspace> {
  const dir = mkdtempSync(join(tmpdir(), 'm2m-test-'));
  const migrationsDir = join(dir, 'migrations');
  const keysDir = join(dir, 'keys');
  const dataDir = join(dir, 'data');
  mkdirSync(migrationsDir);
  mkdirSync(keysDir);
  const template = options.emptyDatabase ? undefined : currentTemplate();
  copyMigrations(template?.migrationsDir ?? join(ROOT, 'migrations'), migrationsDir);
  const adminUrl = process.env.TEST_DATABASE_URL;
  const databaseUrl = adminUrl ? await createDatabase(adminUrl, template?.database) : undefined;
  if (!adminUrl && template?.dataDir) cpSync(template.dataDir, dataDir, { recursive: true });
  const port = await freePort();
  const env: Record<string, string> = {
    ...nodeEnv(),
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? dir,
    PORT: String(port),
    // Never the default 9000: tests run in parallel, each server with its own.
    MANAGEMENT_PORT: String(await freePort()),
    ISSUER: `https://localhost:${port}`,
    MIGRATIONS_DIR: migrationsDir,
    KEYS_DIR: keysDir,
    DATA_DIR: dataDir,
    LOG_LEVEL: 'debug',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...settings,
  };
  return {
    dir, migrationsDir, keysDir, dataDir, databaseUrl, env,
    cli: (script, args, extraEnv = {}) => new Promise((done) => {
      const commandEnv = { ...env, ...extraEnv };
      execFile(NODE, [...nodeFlags(commandEnv), join(ROOT, 'src', 'cli', `${script}.ts`), ...args], { cwd: dir, env: commandEnv }, (err, stdout, stderr) => {
        done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    }),
    async remove() {
      if (adminUrl && databaseUrl) await adminQuery(adminUrl, `DROP DATABASE IF EXISTS ${new URL(databaseUrl).pathname.slice(1)} WITH (FORCE)`);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RunningServer {
  workspace: Workspace;
  issuer: string;
  port: number;
  /** The management listener's port (plain HTTP: /metrics, /healthz, /readyz). */
  managementPort: number;
  /** GET a path on the management listener. */
  management(path: string, init?: RequestInit): Promise<Response>;
  /** Everything the process wrote to stdout (JSON log lines) and stderr. */
  output(): string;
  /**
   * The JSON log lines that match, once there are at least `count` of them: the server
   * writes its log asynchronously, so a line may arrive just after the answer it is about.
   */
  logLines(match: (line: Record<string, unknown>) => boolean, count: number): Promise<Record<string, unknown>[]>;
  /** Trusts the development CA; optionally presents a client certificate. */
  agent(clientCert?: { cert: string; key: string }): Agent;
  fetch(path: string, init?: RequestInit & { cert?: { cert: string; key: string } }): Promise<Response>;
  /** POST a form to a path; `basic` is [client_id, secret]. */
  post(path: string, form: Record<string, string>, options?: { basic?: [string, string]; headers?: Record<string, string>; cert?: { cert: string; key: string } }): Promise<{ status: number; headers: Headers; body: any }>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  process: ChildProcess;
}

export interface StartOptions {
  /** A command the server runs under, e.g. ['taskset', '-c', '0'] to pin it to a core. */
  prefix?: string[];
  /** Keep no copy of the server's output (long benchmarks write a lot of it). */
  discardOutput?: boolean;
}

export async function startServer(workspace: Workspace, extraEnv: Record<string, string> = {}, options: StartOptions = {}): Promise<RunningServer> {
  // TEST_WORKERS=N runs every server of the suite with N workers (PostgreSQL only).
  const workers: Record<string, string> = process.env.TEST_WORKERS && workspace.databaseUrl ? { WORKERS: process.env.TEST_WORKERS } : {};
  // Each server started gets a management port of its own (a test may run two servers of
  // one workspace side by side), unless the test chose one.
  const management: Record<string, string> = extraEnv.MANAGEMENT_PORT ? {} : { MANAGEMENT_PORT: String(await freePort()) };
  const env: Record<string, string> = { ...workspace.env, ...workers, ...management, ...extraEnv };
  const listeners = Number(env.WORKERS ?? 1);
  const [command, ...args] = [...(options.prefix ?? []), NODE, ...nodeFlags(env), join(ROOT, 'src', 'main.ts')];
  const child = spawn(command!, args, { cwd: workspace.dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let listening = 0;
  const keep = (chunk: Buffer) => {
    const text = chunk.toString();
    listening += text.split('"msg":"listening"').length - 1;
    if (!options.discardOutput || listening < listeners) output += text;
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));

  await new Promise<void>((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start within 60 s:\n${output}`)), 60_000);
    const check = () => {
      if (listening >= listeners) {
        clearTimeout(timer);
        child.stdout!.off('data', check);
        done();
      }
    };
    child.stdout!.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code} before listening:\n${output}`));
    });
  });

  const issuer = env.ISSUER!;
  const port = Number(env.PORT);
  const base = env.TLS_MODE === 'proxy' ? `http://127.0.0.1:${port}` : issuer;
  const ca = env.TLS_MODE === 'proxy' ? undefined : readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8');
  const agents = new Map<string, Agent>();
  const agent = (clientCert?: { cert: string; key: string }) => {
    const key = clientCert ? clientCert.cert : '';
    let found = agents.get(key);
    if (!found) {
      found = new Agent({ connect: { ...(ca ? { ca } : {}), ...(clientCert ?? {}) } });
      agents.set(key, found);
    }
    return found;
  };
  const doFetch = (path: string, init: RequestInit & { cert?: { cert: string; key: string } } = {}) => {
    const { cert, ...rest } = init;
    return undiciFetch(`${base}${path}`, { ...rest, dispatcher: agent(cert) });
  };
  const managementPort = Number(env.MANAGEMENT_PORT);
  const managementAgent = new Agent();
  agents.set('management', managementAgent);
  return {
    workspace, issuer, port, managementPort, process: child,
    management: (path, init = {}) => undiciFetch(`http://127.0.0.1:${managementPort}${path}`, { ...init, dispatcher: managementAgent }),
    output: () => output,
    async logLines(match, count) {
      let found: Record<string, unknown>[] = [];
      const parsed = () => output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).filter(match);
      await eventually(async () => (found = parsed()).length >= count, 15_000, `${count} matching log lines`).catch(() => {});
      return found;
    },
    agent,
    fetch: doFetch,
    async post(path, form, options = {}) {
      const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', ...options.headers };
      if (options.basic) {
        const [id, secret] = options.basic;
        headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
      }
      const res = await doFetch(path, { method: 'POST', headers, body: new URLSearchParams(form).toString(), ...(options.cert ? { cert: options.cert } : {}) });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch { /* not JSON: the test sees the text */ }
      return { status: res.status, headers: res.headers as unknown as Headers, body };
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      for (const a of agents.values()) await a.close().catch(() => {});
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Registers a client through the CLI; returns its secret (Basic) and the CLI's JSON. */
export async function addClient(workspace: Workspace, clientId: string, args: string[]): Promise<{ client_secret: string | null; migration: string }> {
  const result = await workspace.cli('client', ['add', clientId, ...args, '--json']);
  if (result.code !== 0) throw new Error(`client add ${clientId} failed (${result.code}): ${result.stderr}`);
  return JSON.parse(result.stdout) as { client_secret: string | null; migration: string };
}

export function decodeJwtPart(token: string, part: 0 | 1): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[part]!, 'base64url').toString('utf8')) as Record<string, unknown>;
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((done) => setTimeout(done, ms));
}

/** Polls `check` until it returns true or `ms` pass; returns the time it took, or throws. */
export async function eventually(check: () => Promise<boolean>, ms: number, what: string): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(200);
  }
}

/**
 * Applies migrations the CLI wrote since the server started. On PostgreSQL they are applied
 * while the server runs (it hears of client changes through NOTIFY); the embedded database
 * belongs to the server process, so there the server is restarted and applies them on start.
 */
export async function applyPending(server: RunningServer, extraEnv: Record<string, string> = {}): Promise<RunningServer> {
  const { workspace } = server;
  if (workspace.databaseUrl) {
    const result = await workspace.cli('migrate', ['latest']);
    if (result.code !== 0) throw new Error(`migrate failed: ${result.stderr}`);
    return server;
  }
  await server.stop();
  return startServer(workspace, extraEnv);
}
