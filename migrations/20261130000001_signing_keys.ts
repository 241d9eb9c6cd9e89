// Signing keys live in the database, shared by every instance: the private part encrypted
// (AES-256-GCM) under a key-encryption key named by `kek_id`, and every time of the
// schedule written by the database's clock, so all instances reach the same answer. A
// statement changing the table notifies the running servers at once (they also poll).
import type { Knex } from 'knex';

const UP = [
  `    CREATE TABLE signing_keys (
      -- Order of insertion: of keys published in one transaction, the later one is newer.
      id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
      kid text PRIMARY KEY,
      public_jwk jsonb NOT NULL,
      -- Both null once the key is retired: a retired key never signs again.
      kek_id text,
      private_key_encrypted text,
      origin text NOT NULL,
      -- The signer this key was generated to succeed (automatic rotation retires it).
      replaces text,
      published_at timestamptz NOT NULL DEFAULT now(),
      signs_from timestamptz NOT NULL,
      retired_at timestamptz,
      unpublish_at timestamptz,
      CHECK ((kek_id IS NULL) = (private_key_encrypted IS NULL)),
      CHECK ((retired_at IS NULL) = (unpublish_at IS NULL)),
      CHECK (retired_at IS NOT NULL OR private_key_encrypted IS NOT NULL)
    )
  `,
  `    CREATE FUNCTION notify_signing_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('m2m_signing_keys_changed', '');
      RETURN NULL;
    END $$
  `,
  `    CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys
      FOR EACH STATEMENT EXECUTE FUNCTION notify_signing_keys_changed()
  `,
];

const DOWN = [
  'DROP TRIGGER signing_keys_changed ON signing_keys',
  'DROP FUNCTION notify_signing_keys_changed()',
  'DROP TABLE signing_keys',
];

export async function up(knex: Knex): Promise<void> {
  // One statement per call: PGlite runs each through a prepared statement.
  for (const statement of UP) await knex.raw(statement);
}

/** Rolling back drops the only copy of the private keys: refused while there are any, unless asked for by name. */
export const ALLOW_KEY_LOSS = 'M2M_ALLOW_KEY_LOSS';

export async function down(knex: Knex): Promise<void> {
  const result = await knex.raw('SELECT count(*)::int AS n FROM signing_keys');
  const n = Number((result as { rows: { n: number }[] }).rows[0]!.n);
  if (n > 0 && process.env[ALLOW_KEY_LOSS] !== 'true') {
    throw new Error(`refusing to drop signing_keys: it holds ${n} signing key(s), the only copy of the private keys; back up the database, or set ${ALLOW_KEY_LOSS}=true to roll back anyway`);
  }
  for (const statement of DOWN) await knex.raw(statement);
}
