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
    const inserted = await query(() => this.#db('replay_detection')
      .insert({ id, expires_at: new Date(expiresAt * 1000) })
      .onConflict('id')
      .ignore()
      .returning('id'));
    return inserted.length === 1;
  }

  async purgeExpired(): Promise<number> {
    return query(() => this.#db('replay_detection').where('expires_at', '<', new Date()).delete());
  }
}
