// Single use of client-assertion ids: the primary key makes the first INSERT win, so of
// any number of concurrent requests with one assertion, across workers and instances,
// exactly one gets through.
//
// Claims go to the database in batches, one statement and one commit each, with at most
// one batch in flight per process: what arrives while one is out waits for it and goes in
// the next (group commit). Alone, a claim goes at the end of its turn of the event loop, as
// soon as it would one by one; under load a batch holds every claim made during the round
// trip before, and the database's work per claim (most of what a single-use jti costs a
// DPoP proof or a client assertion) shrinks as the load grows. A claim waits at most
// DATABASE_TIMEOUT in all, the batch before its own included: a stuck batch holds the
// claims behind it no longer than that.
import { hash } from 'node:crypto';

import type { Database } from './database.ts';
import { query } from './errors.ts';

/** Rows in one statement at most (a burst larger than this goes in several, in turn). */
const MAX_BATCH = 500;

interface Claim {
  id: string;
  exp: number;
  /** When it was asked for (ms): its wait, queueing included, is bounded from here. */
  at: number;
  settle: (won: boolean | Error) => void;
}

export class ReplayStore {
  readonly #db: Database;
  #waiting: Claim[] = [];
  /** A batch is being inserted, or one is scheduled for the end of this turn. */
  #busy = false;

  constructor(db: Database) {
    this.#db = db;
  }

  /** True the first time `key` is claimed before `expiresAt` (epoch seconds), false after. */
  claim(key: string, expiresAt: number): Promise<boolean> {
    const id = hash('sha256', key, 'base64url');
    return new Promise((resolve, reject) => {
      this.#waiting.push({ id, exp: expiresAt, at: Date.now(), settle: (won) => (won instanceof Error ? reject(won) : resolve(won)) });
      if (!this.#busy) {
        this.#busy = true;
        setImmediate(() => {
          // #insert settles every claim it takes, even on failure; were anything else to
          // throw, the claims still waiting are refused with it rather than left hanging.
          this.#flush().catch((err: unknown) => {
            for (const claim of this.#waiting.splice(0)) claim.settle(err instanceof Error ? err : new Error(String(err)));
          });
        });
      }
    });
  }

  /** Inserts what is waiting, then what came meanwhile, until nothing waits. */
  async #flush(): Promise<void> {
    try {
      while (this.#waiting.length > 0) {
        await this.#insert(this.#waiting.splice(0, MAX_BATCH));
      }
    } finally {
      this.#busy = false;
    }
  }

  async #insert(batch: Claim[]): Promise<void> {
    // Within a batch the first claim of an id is the one the database decides; a second
    // claim of the same id has lost already.
    const first = new Map<string, Claim>();
    for (const claim of batch) {
      if (first.has(claim.id)) claim.settle(false);
      else first.set(claim.id, claim);
    }
    try {
      // In id order: concurrent batches (other workers, other instances) then take their row
      // locks in one order and cannot deadlock one another.
      const rows = JSON.stringify([...first.values()].map(({ id, exp }) => ({ id, exp })).sort((a, b) => (a.id < b.id ? -1 : 1)));
      const result = await query(() => this.#db.raw(
        'INSERT INTO replay_detection (id, expires_at) SELECT id, to_timestamp(exp) FROM json_to_recordset(?::json) AS t(id text, exp float8) '
        + 'ON CONFLICT (id) DO NOTHING RETURNING id',
        [rows],
      ), batch[0]!.at);
      const inserted = new Set((result as { rows: { id: string }[] }).rows.map((row) => row.id));
      for (const [id, claim] of first) claim.settle(inserted.has(id));
    } catch (err) {
      for (const claim of first.values()) claim.settle(err as Error);
    }
  }

  async purgeExpired(): Promise<number> {
    // By the database's clock, with a margin: an instance whose clock runs behind must still
    // find the row of an assertion it could take as unexpired.
    return query(() => this.#db('replay_detection').whereRaw("expires_at < now() - interval '5 minutes'").delete());
  }
}
