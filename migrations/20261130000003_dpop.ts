// DPoP (RFC 9449): a client may be registered to require DPoP-bound tokens, and the DPoP
// nonce secret is kept here so every worker and instance issues and accepts the same nonces.
import type { Knex } from 'knex';

const UP = [
  `    ALTER TABLE clients ADD COLUMN dpop_bound boolean NOT NULL DEFAULT false
  `,
  `    -- Secrets every server process must share, each created once by whichever process
    -- needs it first and read at start, never per request.
    -- Encrypted (AES-256-GCM) under the key-encryption key named by kek_id, like signing_keys.
    CREATE TABLE shared_secrets (
      name text PRIMARY KEY,
      kek_id text NOT NULL,
      secret_encrypted text NOT NULL
        CONSTRAINT secret_is_base64url CHECK (secret_encrypted ~ '^[A-Za-z0-9_-]+$'),
      created_at timestamptz NOT NULL DEFAULT now()
    )
  `,
];

const DOWN = [
  'DROP TABLE shared_secrets',
  'ALTER TABLE clients DROP COLUMN dpop_bound',
];

export async function up(knex: Knex): Promise<void> {
  // One statement per call: PGlite runs each through a prepared statement.
  for (const statement of UP) await knex.raw(statement);
}

export async function down(knex: Knex): Promise<void> {
  for (const statement of DOWN) await knex.raw(statement);
}
