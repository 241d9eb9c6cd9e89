// A database holding the project's migrations and nothing else, made once per jest run (by
// test/helpers/global-setup.ts) and copied for every workspace: initialising and migrating
// a database costs seconds of CPU per workspace, copying one costs milliseconds. Embedded:
// a PGlite data directory, copied as files. PostgreSQL: a database every workspace's is
// created from (`CREATE DATABASE … TEMPLATE`). The template is made by the project's own
// `migrate latest` from its own migrations/ folder, which every workspace copies with it,
// so knex_migrations always names exactly the files beside it.
// The template's folder also holds the run's V8 compile cache (NODE_COMPILE_CACHE): every
// server and command a test starts compiles the same source, so all but the first read it.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import pg from 'pg';

import { NODE, nodeFlags } from './node.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');

/** Where global-setup tells the test workers about the template; unset: every workspace starts empty. */
export const TEMPLATE_ENV = 'M2M_TEST_TEMPLATE';

export interface Template {
  /** The template's own folder (embedded: its data directory is inside). */
  dir: string;
  /** The migrations the template holds: a workspace copies these files. */
  migrationsDir: string;
  /** Embedded: the migrated PGlite data directory. */
  dataDir?: string;
  /** PostgreSQL: the migrated database's name. */
  database?: string;
  /** The compile cache every node process of the run shares. */
  compileCache: string;
}

export function copyMigrations(from: string, to: string): void {
  for (const file of readdirSync(from)) {
    if (file.endsWith('.ts')) copyFileSync(join(from, file), join(to, file));
  }
}

/** The template this jest run made, if any. */
export function currentTemplate(): Template | undefined {
  const value = process.env[TEMPLATE_ENV];
  return value ? JSON.parse(value) as Template : undefined;
}

/** What every node process a test starts has in its environment, whatever its database. */
export function nodeEnv(): Record<string, string> {
  const template = currentTemplate();
  return template ? { NODE_COMPILE_CACHE: template.compileCache } : {};
}

export function databaseUrl(adminUrl: string, name: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export async function adminQuery(adminUrl: string, sql: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}

/** Makes the template with `node src/cli/migrate.ts latest`, as an operator would migrate. */
export async function createTemplate(adminUrl: string | undefined): Promise<Template> {
  const dir = mkdtempSync(join(tmpdir(), 'm2m-template-'));
  const migrationsDir = join(dir, 'migrations');
  mkdirSync(migrationsDir);
  copyMigrations(join(ROOT, 'migrations'), migrationsDir);
  const database = adminUrl ? `m2m_template_${randomBytes(6).toString('hex')}` : undefined;
  if (adminUrl && database) await adminQuery(adminUrl, `CREATE DATABASE ${database}`);
  const dataDir = join(dir, 'data');
  const compileCache = join(dir, 'compile-cache');
  const env: Record<string, string> = {
    NODE_COMPILE_CACHE: compileCache,
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? dir,
    MIGRATIONS_DIR: migrationsDir,
    KEYS_DIR: join(dir, 'keys'),
    DATA_DIR: dataDir,
    ...(adminUrl && database ? { DATABASE_URL: databaseUrl(adminUrl, database) } : {}),
  };
  const template: Template = { dir, migrationsDir, compileCache, ...(database ? { database } : { dataDir }) };
  await new Promise<void>((done, fail) => {
    execFile(NODE, [...nodeFlags(env), join(ROOT, 'src', 'cli', 'migrate.ts'), 'latest'], { cwd: dir, env }, (err, _stdout, stderr) => {
      if (err) fail(new Error(`the test database template could not be migrated: ${stderr}`));
      else done();
    });
  }).catch(async (err: unknown) => {
    await removeTemplate(adminUrl, template);
    throw err;
  });
  return template;
}

export async function removeTemplate(adminUrl: string | undefined, template: Template): Promise<void> {
  if (adminUrl && template.database) await adminQuery(adminUrl, `DROP DATABASE IF EXISTS ${template.database} WITH (FORCE)`);
  rmSync(template.dir, { recursive: true, force: true });
}
