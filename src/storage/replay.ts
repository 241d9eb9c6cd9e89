// Single use of client-assertion ids: the primary key makes the first INSERT win, so of
// any number of concurrent requests with one assertion, across workers and instances,
// exactly one gets through.
import { createHash } from 'node:crypto';

import type { Database } from './database.ts';
import { query } from './errors.ts';

export class ReplayStore {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  /** True the first time `key` is claimed before `expiresAt` (epoch seconds), false after. */
  async claim(key: string, expiresAt: number): Promise<boolean> {
    const id = createHash('sha256').update(key).digest('base64url');
    // Raw SQL: this runs on every private_key_jwt request, and the query builder costs more
    // than the query.
    const result = await query(() => this.#db.raw(
      'INSERT INTO replay_detection (id, expires_at) VALUES (?, to_timestamp(?)) ON CONFLICT (id) DO NOTHING RETURNING id',
      [id, expiresAt],
    ));
    return (result as { rows: unknown[] }).rows.length === 1;
  }

  async purgeExpired(): Promise<number> {
    // By the database's clock, with a margin: an instance whose clock runs behind must still
    // find the row of an assertion it could take as unexpired.
    return query(() => this.#db('replay_detection').whereRaw("expires_at < now() - interval '5 minutes'").delete());
  }
}
