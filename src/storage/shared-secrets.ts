// Secrets that every server process must hold alike (the DPoP nonce secret): the first
// process to ask creates one, and the primary key makes every other process, on any
// instance, read that one. Stored encrypted under the key-encryption key, like the signing
// keys (a database dump does not give it away); read once at start, never on a request's path.
import { randomBytes } from 'node:crypto';

import type { Database } from './database.ts';
import { query } from './errors.ts';

/** The key-encryption of the signing keys (src/keys/key-encryption.ts), as storage may use it. */
export interface SecretEncryption {
  current: { id: string };
  encrypt(name: string, plaintext: Buffer, purpose: string): { kekId: string; ciphertext: string };
  decrypt(name: string, kekId: string, ciphertext: string, purpose: string): Buffer;
}

const SHARED_SECRET = 'm2m-shared-secret';

/** The 32-byte secret called `name`, created now if no process created it before. */
export async function sharedSecret(db: Database, name: string, encryption: SecretEncryption): Promise<Buffer> {
  const { kekId, ciphertext } = encryption.encrypt(name, randomBytes(32), SHARED_SECRET);
  const row = await query(async () => {
    await db('shared_secrets').insert({ name, kek_id: kekId, secret_encrypted: ciphertext }).onConflict('name').ignore();
    return await db('shared_secrets').where({ name }).first('kek_id', 'secret_encrypted') as { kek_id: string; secret_encrypted: string } | undefined;
  });
  if (!row) throw new Error(`shared secret ${name} vanished after it was created`);
  return encryption.decrypt(name, row.kek_id, row.secret_encrypted, SHARED_SECRET);
}

/** Re-encrypts every shared secret under the first key-encryption key; returns the names it changed. */
export async function reencryptSharedSecrets(db: Database, encryption: SecretEncryption): Promise<string[]> {
  const exists = await db.raw("SELECT to_regclass('shared_secrets') AS t");
  if (!(exists as { rows: { t: unknown }[] }).rows[0]?.t) return [];
  const changed: string[] = [];
  for (const row of await db('shared_secrets').select('name', 'kek_id', 'secret_encrypted') as { name: string; kek_id: string; secret_encrypted: string }[]) {
    if (row.kek_id === encryption.current.id) continue;
    const { kekId, ciphertext } = encryption.encrypt(row.name, encryption.decrypt(row.name, row.kek_id, row.secret_encrypted, SHARED_SECRET), SHARED_SECRET);
    await db('shared_secrets').where({ name: row.name }).update({ kek_id: kekId, secret_encrypted: ciphertext });
    changed.push(row.name);
  }
  return changed;
}
