// The one place that opens the database: PostgreSQL through `pg` when DATABASE_URL is set,
// otherwise PGlite (real PostgreSQL compiled to WebAssembly) in DATA_DIR, in this process.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

import knexFactory, { type Knex } from 'knex';

// PGlite is loaded only when it is used: a server on PostgreSQL does not carry it.
const require = createRequire(import.meta.url);

export type Database = Knex;

export interface DatabaseOptions {
  databaseUrl: string | undefined;
  dataDir: string;
  migrationsDir: string;
  /** Pool size for a PostgreSQL server; PGlite always has one connection. */
  poolMax?: number;
  /** Where knex's own warnings go (otherwise the console). */
  logger?: { warn(obj: object, msg: string): void; debug(obj: object, msg: string): void };
}

export function knexConfig(options: DatabaseOptions): Knex.Config {
  const migrations: Knex.MigratorConfig = {
    directory: options.migrationsDir,
    loadExtensions: ['.ts'],
    tableName: 'knex_migrations',
  };
  const log = options.logger && {
    warn: (message: unknown) => options.logger!.warn({ detail: String(message) }, 'database warning'),
    error: (message: unknown) => options.logger!.warn({ detail: String(message) }, 'database error'),
    deprecate: (message: unknown) => options.logger!.debug({ detail: String(message) }, 'database deprecation'),
    debug: (message: unknown) => options.logger!.debug({ detail: String(message) }, 'database debug'),
  };
  if (options.databaseUrl) {
    return {
      ...(log ? { log } : {}),
      client: 'pg',
      connection: { connectionString: options.databaseUrl, statement_timeout: 3000, query_timeout: 4000, connectionTimeoutMillis: 3000 },
      pool: { min: 0, max: options.poolMax ?? 10, acquireTimeoutMillis: 3000 },
      acquireConnectionTimeout: 3000,
      migrations,
    };
  }
  return {
    client: require('knex-pglite') as typeof Knex.Client,
    dialect: 'postgres',
    connection: { filename: options.dataDir } as Knex.StaticConnectionConfig,
    migrations,
  };
}

// PGlite's data directory must never be opened by two processes at once: a second opener
// would corrupt it. A lock file with the owner's pid guards it; a stale one is taken over.
function lockEmbedded(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true });
  const lockFile = join(dataDir, '.m2m-lock');
  try {
    writeFileSync(lockFile, String(process.pid), { flag: 'wx' });
  } catch {
    const owner = Number(readFileSync(lockFile, 'utf8'));
    let alive = false;
    try {
      process.kill(owner, 0);
      alive = owner !== process.pid;
    } catch { /* no such process: the lock is stale */ }
    if (alive) {
      throw new Error(`the embedded database in ${dataDir} is in use by process ${owner}; stop it first, or set DATABASE_URL`);
    }
    writeFileSync(lockFile, String(process.pid));
  }
  return () => rmSync(lockFile, { force: true });
}

export interface OpenDatabase {
  db: Database;
  embedded: boolean;
  /** Closes the pool (and releases the embedded database's lock). */
  close(): Promise<void>;
}

export function openDatabase(options: DatabaseOptions): OpenDatabase {
  if (options.databaseUrl) {
    const db = knexFactory(knexConfig(options));
    return { db, embedded: false, close: () => db.destroy() };
  }
  const unlock = lockEmbedded(options.dataDir);
  const db = knexFactory(knexConfig(options));
  return {
    db,
    embedded: true,
    async close() {
      try {
        await db.destroy();
      } finally {
        unlock();
      }
    },
  };
}
