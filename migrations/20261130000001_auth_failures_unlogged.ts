// Every client authentication from a key without a lease in hand writes here (brute-force
// limits are taken before the credential is checked). The counts need no durability: after
// a crash they start again from zero, as after their window. Unlogged, a write waits for
// no WAL flush.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE auth_failures SET UNLOGGED');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE auth_failures SET LOGGED');
}
