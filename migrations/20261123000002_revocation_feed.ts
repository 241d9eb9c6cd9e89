// Every server process keeps the revoked token ids in memory. This tells them at once when
// a token is revoked (NOTIFY, payload "<exp> <jti>"), and `revoked_at` lets them catch up
// by asking for the latest revocations if a notification is lost.
import type { Knex } from 'knex';

const UP = [
  // clock_timestamp(): the time of the insert itself, not of its transaction's start.
  `    ALTER TABLE revoked_tokens ADD COLUMN revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
  `,
  `    CREATE INDEX revoked_tokens_revoked_at ON revoked_tokens (revoked_at)
  `,
  `    CREATE FUNCTION notify_token_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('m2m_token_revoked', extract(epoch FROM NEW.expires_at)::bigint || ' ' || NEW.jti);
      RETURN NULL;
    END $$
  `,
  `    CREATE TRIGGER revoked_tokens_inserted AFTER INSERT ON revoked_tokens
      FOR EACH ROW EXECUTE FUNCTION notify_token_revoked()
  `,
];

const DOWN = [
  'DROP TRIGGER revoked_tokens_inserted ON revoked_tokens',
  'DROP FUNCTION notify_token_revoked()',
  'DROP INDEX revoked_tokens_revoked_at',
  'ALTER TABLE revoked_tokens DROP COLUMN revoked_at',
];

export async function up(knex: Knex): Promise<void> {
  // One statement per call: PGlite runs each through a prepared statement.
  for (const statement of UP) await knex.raw(statement);
}

export async function down(knex: Knex): Promise<void> {
  for (const statement of DOWN) await knex.raw(statement);
}
