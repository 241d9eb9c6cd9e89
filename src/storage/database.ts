// The one place that opens the database: PostgreSQL through `pg` when DATABASE_URL is set,
// otherwise PGlite (real PostgreSQL compiled to WebAssembly) in DATA_DIR, in this process.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

import knexFactory, { type Knex } from 'knex';

import { admitQuery, databaseAnswered, databaseFailed, isOutage, setDatabaseDeadline, StorageUnavailable } from './errors.ts';

// PGlite is loaded only when it is used: a server on PostgreSQL does not carry it.
const require = createRequire(import.meta.url);

export type Database = Knex;

export interface DatabaseOptions {
  databaseUrl: string | undefined;
  dataDir: string;
  migrationsDir: string;
  /** Pool size for a PostgreSQL server; PGlite always has one connection. */
  poolMax?: number;
  /** DATABASE_TIMEOUT in seconds: the longest wait for a connection, and for a statement. */
  databaseTimeout?: number;
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
    const ms = Math.round((options.databaseTimeout ?? 2) * 1000);
    return {
      ...(log ? { log } : {}),
      client: 'pg',
      // The server gives up a statement at `ms` and says so, leaving the connection usable;
      // the client's own limit, a little later, is for a database that does not answer at
      // all, and the connection it leaves is dropped (guardPool).
      connection: { connectionString: options.databaseUrl, statement_timeout: ms, query_timeout: ms + STATEMENT_SLACK_MS, connectionTimeoutMillis: ms },
      pool: { min: 0, max: options.poolMax ?? 10 },
      acquireConnectionTimeout: ms,
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

/** How much later than the server's statement_timeout the client stops waiting for an answer. */
const STATEMENT_SLACK_MS = 250;

interface PooledConnection {
  /** pg: false while a statement is unanswered (a timed-out one included). */
  readyForQuery?: boolean;
  __knex__disposed?: unknown;
  /** pg: with a statement unanswered, closes the socket at once. */
  end?(): Promise<void>;
}

interface PoolingClient {
  acquireConnection(): Promise<PooledConnection>;
  releaseConnection(connection: PooledConnection): Promise<unknown>;
}

/**
 * Every connection taken from the pool, by knex or by a library given the knex instance (the
 * brute-force limiter takes its own), passes here: the fail-fast of errors.ts covers every
 * query, and a connection whose statement never answered is dropped instead of going back
 * to the pool, where the next query would wait behind the lost answer.
 */
function guardPool(db: Knex): void {
  const client = db.client as PoolingClient;
  const acquire = client.acquireConnection.bind(client);
  const release = client.releaseConnection.bind(client);
  const probes = new WeakSet<PooledConnection>();
  client.acquireConnection = async () => {
    const probe = admitQuery();
    try {
      const connection = await acquire();
      if (probe) probes.add(connection);
      return connection;
    } catch (err) {
      if (!isOutage(err)) throw err;
      // Every connection busy for DATABASE_TIMEOUT refuses this query only: a burst can fill
      // the pool while the database answers. A database that does not answer shows in the
      // statements that time out and the connections that cannot be made.
      if (probe || (err as Error).name !== 'KnexTimeoutError') databaseFailed();
      throw new StorageUnavailable(err);
    }
  };
  client.releaseConnection = (connection) => {
    if (connection.readyForQuery === false || connection.__knex__disposed) {
      // The pool destroys a disposed connection rather than hand it out again.
      connection.__knex__disposed ??= 'a statement did not answer in time';
      if (connection.readyForQuery === false) connection.end?.().catch(() => {});
      databaseFailed();
    } else if (probes.delete(connection)) {
      databaseAnswered();
    }
    return release(connection);
  };
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
    guardPool(db);
    setDatabaseDeadline(Math.round((options.databaseTimeout ?? 2) * 1000) + STATEMENT_SLACK_MS);
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
