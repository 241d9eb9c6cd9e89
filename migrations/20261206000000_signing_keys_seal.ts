// Each signing_keys row's public part and schedule are sealed (HMAC) under the
// key-encryption keys, so a row written by anyone without them is never published or
// trusted. Rows from an earlier version have no seal: a server seals those whose private
// part decrypts under its key-encryption key and matches the row's kid (src/keys/signing-keys.ts).
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE signing_keys ADD COLUMN seal text');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE signing_keys DROP COLUMN seal');
}
