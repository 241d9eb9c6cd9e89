// Single use of client-assertion ids: the primary key makes the first INSERT win, so of
// any number of concurrent requests with one assertion, across workers and instances,
// exactly one gets through.
//
// Claims that arrive in the same turn of the event loop go to the database as one
// statement: under load that is one round trip and one commit for several requests,
// instead of one each (the database's work was most of private_key_jwt's extra cost).
import { hash } from 'node:crypto';

import type { Database } from './database.ts';
import { query } from './errors.ts';

interface Claim {
  id: string;
  exp: number;
  settle: (won: boolean | Error) => void;
}

export class ReplayStore {
  readonly #db: Database;
  #waiting: Claim[] = [];

  constructor(db: Database) {
    this.#db = db;
  }

  /** True the first time `key` is claimed before `expiresAt` (epoch seconds), false after. */
  claim(key: string, expiresAt: number): Promise<boolean> {
    const id = hash('sha256', key, 'base64url');
    return new Promise((resolve, reject) => {
      if (this.#waiting.length === 0) setImmediate(() => void this.#insert());
      this.#waiting.push({ id, exp: expiresAt, settle: (won) => (won instanceof Error ? reject(won) : resolve(won)) });
    });
  }

  async #insert(): Promise<void> {
    const batch = this.#waiting;
    this.#waiting = [];
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
      ));
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
