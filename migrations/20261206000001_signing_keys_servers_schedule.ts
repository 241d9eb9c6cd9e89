// A new key signs after each server's own delay (its JWKS_MAX_AGE + KEYS_RELOAD_SECONDS
// from when the key was published), so `signs_from` is stored only for a key that signs at
// once (the first key, a former signer imported from files) and is null otherwise: the
// process that adds a key (a deploy job with default settings) does not know the servers'.
// An earlier version's waiting keys (unsealed: no server has vouched for them yet) get the
// servers' delay too; the servers seal them at start.
import type { Knex } from 'knex';

/** The delay an earlier version stored by default (JWKS_MAX_AGE 300 + KEYS_RELOAD_SECONDS 30). */
const EARLIER_DEFAULT_DELAY = '330 seconds';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE signing_keys ALTER COLUMN signs_from DROP NOT NULL');
  await knex.raw('UPDATE signing_keys SET signs_from = NULL WHERE seal IS NULL AND signs_from > published_at');
}

/** Back to a stored time for every key; the seal no longer matches, so it goes too (the server seals again). */
export async function down(knex: Knex): Promise<void> {
  await knex.raw(`UPDATE signing_keys SET signs_from = published_at + interval '${EARLIER_DEFAULT_DELAY}', seal = NULL WHERE signs_from IS NULL`);
  await knex.raw('ALTER TABLE signing_keys ALTER COLUMN signs_from SET NOT NULL');
}
