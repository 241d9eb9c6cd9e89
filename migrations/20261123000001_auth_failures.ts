// Failed client authentications, counted per key (client id and source address, or source
// address alone) so that brute-force limits hold across workers and instances. The shape
// is the one rate-limiter-flexible's PostgreSQL store reads and writes.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    CREATE TABLE auth_failures (
      key varchar(255) PRIMARY KEY,
      points integer NOT NULL DEFAULT 0,
      expire bigint
    )
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('DROP TABLE auth_failures');
}
