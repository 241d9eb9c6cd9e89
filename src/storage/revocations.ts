// Revoked access-token ids, kept until the token would have expired anyway.
import type { Database } from './database.ts';
import { query } from './errors.ts';

export class RevocationStore {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  async revoke(jti: string, expiresAt: number): Promise<void> {
    await query(() => this.#db('revoked_tokens')
      .insert({ jti, expires_at: new Date(expiresAt * 1000) })
      .onConflict('jti')
      .ignore());
  }

  async isRevoked(jti: string): Promise<boolean> {
    const row = await query(() => this.#db('revoked_tokens').where({ jti }).first('jti'));
    return row !== undefined;
  }

  async purgeExpired(): Promise<number> {
    return query(() => this.#db('revoked_tokens').where('expires_at', '<', new Date()).delete());
  }
}
