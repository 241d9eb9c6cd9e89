// Revoked access-token ids. The database keeps them until the token would have expired
// anyway; every server process also keeps them in memory, so introspection asks the
// database nothing. The copy is kept current by:
// - the process itself, for what it revokes (and, in a cluster, the primary tells every
//   other worker before the revoking one answers);
// - on PostgreSQL, a NOTIFY from other processes and instances (milliseconds), and a poll
//   every POLL_MS for the latest revocations in case a notification was lost.
// A copy that has not caught up with the database for STALE_MS is not trusted: lookups go
// to the database again (and so answer 503 while it is down) until it has.
import type { Database } from './database.ts';
import { query } from './errors.ts';

const POLL_MS = 1000;
const STALE_MS = 3000;
/** The poll reads revocations this recent; a longer gap in polling means a full reload. */
const RECENT_MS = 30_000;
/** A full reload reads every revocation in force: it may take longer than a poll. */
const FULL_LOAD_MS = 15_000;

/** How a process learnt of a revocation. */
export type RevocationSource = 'self' | 'worker' | 'notification' | 'poll' | 'lookup';

export interface RevocationOptions {
  /** Other processes may revoke tokens in this database (PostgreSQL). */
  shared: boolean;
  /** Tells this instance's other workers; resolves once they know (or could not be told). */
  announce?: (jti: string, expiresAt: number) => Promise<void>;
  /** Called once per revocation newly added to this process's list. */
  onLearnt?: (source: RevocationSource) => void;
}

/** A revocation's id and expiry (epoch seconds), as every read of the table returns them. */
const COLUMNS = 'jti, extract(epoch FROM expires_at)::bigint AS exp';
interface Row {
  jti: string;
  /** bigint: a string from pg, a number or bigint from PGlite. */
  exp: string | number;
}

/** A monotonic clock in ms: a stepped wall clock must not make a stale copy look current. */
const monotonic = () => performance.now();

export class RevocationStore {
  readonly #db: Database;
  readonly #options: RevocationOptions;
  /** jti → exp (epoch seconds) */
  readonly #revoked = new Map<string, number>();
  /** When the copy last caught up with the database (monotonic ms); undefined before the first load. */
  #syncedAt: number | undefined;
  readonly #createdAt = monotonic();
  #catchingUp = false;
  #poller: NodeJS.Timeout | undefined;

  constructor(db: Database, options: RevocationOptions) {
    this.#db = db;
    this.#options = options;
  }

  /** Loads the revocations in force; on a shared database, keeps polling for new ones. */
  async start(): Promise<void> {
    if (!this.#options.shared) {
      await this.#catchUp();
      return;
    }
    // Until a first load succeeds, every lookup asks the database.
    await this.#catchUp().catch(() => {});
    this.#poller = setInterval(() => void this.#catchUp().catch(() => {}), POLL_MS);
    this.#poller.unref();
  }

  stop(): void {
    clearInterval(this.#poller);
  }

  async revoke(jti: string, expiresAt: number): Promise<void> {
    await query(() => this.#db.raw(
      'INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, to_timestamp(?)) ON CONFLICT (jti) DO NOTHING',
      [jti, expiresAt],
    ));
    this.remember(jti, expiresAt, 'self');
    await this.#options.announce?.(jti, expiresAt);
  }

  /** A notification from the table's trigger (migration 20261123000002): "<exp> <jti>". */
  notified(payload: string): void {
    const space = payload.indexOf(' ');
    this.remember(payload.slice(space + 1), Number(payload.slice(0, space)), 'notification');
  }

  /** Adds a revocation learnt from elsewhere (another worker, a notification). */
  remember(jti: string, expiresAt: number, source: RevocationSource): void {
    if (!(expiresAt * 1000 > Date.now()) || this.#revoked.has(jti)) return;
    this.#revoked.set(jti, expiresAt);
    this.#options.onLearnt?.(source);
  }

  /** For /metrics: how many ids the list holds, and how far behind the database it may be. */
  state(): { size: number; behindSeconds: number } {
    const since = this.#syncedAt ?? this.#createdAt;
    const behind = !this.#options.shared && this.#syncedAt !== undefined ? 0 : (monotonic() - since) / 1000;
    return { size: this.#revoked.size, behindSeconds: Math.round(behind * 10) / 10 };
  }

  async isRevoked(jti: string): Promise<boolean> {
    if (this.#revoked.has(jti)) return true;
    if (this.#current()) return false;
    // The copy may be missing a revocation: ask the database (503 if it cannot answer).
    const result = await query(() => this.#db.raw(
      `SELECT ${COLUMNS} FROM revoked_tokens WHERE jti = ?`,
      [jti],
    ));
    const row = (result as { rows: Row[] }).rows[0];
    if (row) this.remember(jti, Number(row.exp), 'lookup');
    return row !== undefined;
  }

  async purgeExpired(): Promise<number> {
    const now = Date.now() / 1000;
    for (const [jti, exp] of this.#revoked) if (exp < now) this.#revoked.delete(jti);
    return query(() => this.#db('revoked_tokens').where('expires_at', '<', new Date()).delete());
  }

  #current(): boolean {
    if (this.#syncedAt === undefined) return false;
    return !this.#options.shared || monotonic() - this.#syncedAt < STALE_MS;
  }

  /**
   * Reads what was revoked recently (or, after a gap or at first, everything in force).
   * Not through query(): a failed poll only leaves the copy stale, which lookups then
   * notice (a statement that never answers still makes the pool fail fast, as any does). A poll that runs too long is
   * cancelled in the database, and polls never overlap.
   */
  async #catchUp(): Promise<void> {
    if (this.#catchingUp) return;
    this.#catchingUp = true;
    try {
      const started = monotonic();
      const recent = this.#syncedAt !== undefined && started - this.#syncedAt < RECENT_MS - POLL_MS;
      const where = recent ? `revoked_at > now() - interval '${RECENT_MS / 1000} seconds'` : 'expires_at > now()';
      const sql = `SELECT ${COLUMNS} FROM revoked_tokens WHERE ${where}`;
      const result = await this.#db.raw(sql).timeout(recent ? STALE_MS - POLL_MS : FULL_LOAD_MS, { cancel: this.#options.shared });
      for (const row of (result as { rows: Row[] }).rows) this.remember(row.jti, Number(row.exp), 'poll');
      this.#syncedAt = started;
    } finally {
      this.#catchingUp = false;
    }
  }
}
