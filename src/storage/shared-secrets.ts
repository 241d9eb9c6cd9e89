// Secrets that every server process must hold alike (the DPoP nonce secret): the first
// process to ask creates one, and the primary key makes every other process, on any
// instance, read that one. Read once at start; nothing here is on a request's path.
import { randomBytes } from 'node:crypto';

import type { Database } from './database.ts';
import { query } from './errors.ts';

/** The 32-byte secret called `name`, created now if no process created it before. */
export async function sharedSecret(db: Database, name: string): Promise<Buffer> {
  return query(async () => {
    await db('shared_secrets').insert({ name, secret: randomBytes(32).toString('base64url') }).onConflict('name').ignore();
    const row = await db('shared_secrets').where({ name }).first('secret') as { secret: string } | undefined;
    if (!row) throw new Error(`shared secret ${name} vanished after it was created`);
    return Buffer.from(row.secret, 'base64url');
  });
}
