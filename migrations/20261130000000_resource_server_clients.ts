// A client registered with --introspect alone (a resource server that introspects and
// revokes) has no audience: a client needs audiences or introspection audiences, or both.
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    ALTER TABLE clients DROP CONSTRAINT audiences_present,
      ADD CONSTRAINT audiences_valid CHECK (array_position(audiences, '') IS NULL),
      ADD CONSTRAINT audiences_or_introspection CHECK (cardinality(audiences) >= 1 OR cardinality(introspect_audiences) >= 1)
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    ALTER TABLE clients DROP CONSTRAINT audiences_or_introspection, DROP CONSTRAINT audiences_valid,
      ADD CONSTRAINT audiences_present CHECK (cardinality(audiences) >= 1 AND array_position(audiences, '') IS NULL)
  `);
}
