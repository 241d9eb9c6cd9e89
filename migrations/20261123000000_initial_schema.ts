// The schema. Migrations import nothing from src/: once written, a migration must keep
// meaning what it meant, whatever the code around it becomes.
import type { Knex } from 'knex';

const SCHEMA = [
  `    CREATE TABLE clients (
      client_id text PRIMARY KEY
        CONSTRAINT client_id_format CHECK (client_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
      auth_method text NOT NULL
        CONSTRAINT auth_method_known CHECK (auth_method IN
          ('client_secret_basic', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth')),
      audiences text[] NOT NULL
        CONSTRAINT audiences_present CHECK (cardinality(audiences) >= 1 AND array_position(audiences, '') IS NULL),
      scopes text[] NOT NULL DEFAULT '{}'
        CONSTRAINT scopes_format CHECK (array_to_string(scopes, ' ') ~ '^[!#-\\[\\]-~]*( [!#-\\[\\]-~]+)*$'),
      ttl integer
        CONSTRAINT ttl_range CHECK (ttl BETWEEN 1 AND 86400),
      jwks jsonb
        CONSTRAINT jwks_has_keys CHECK (jsonb_typeof(jwks -> 'keys') = 'array'),
      jwks_uri text
        CONSTRAINT jwks_uri_https CHECK (jwks_uri ~ '^https://[^\\s]+$'),
      tls_subject_dn text,
      tls_san_dns text,
      tls_san_uri text,
      certificate_bound boolean NOT NULL DEFAULT false,
      introspect_audiences text[] NOT NULL DEFAULT '{}',
      enabled boolean NOT NULL DEFAULT true,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      CONSTRAINT basic_has_no_keys_or_certificates CHECK (auth_method <> 'client_secret_basic'
        OR num_nonnulls(jwks, jwks_uri, tls_subject_dn, tls_san_dns, tls_san_uri) = 0),
      CONSTRAINT private_key_jwt_needs_jwks_or_jwks_uri CHECK (auth_method <> 'private_key_jwt'
        OR (num_nonnulls(jwks, jwks_uri) = 1 AND num_nonnulls(tls_subject_dn, tls_san_dns, tls_san_uri) = 0)),
      CONSTRAINT tls_client_auth_needs_one_subject CHECK (auth_method <> 'tls_client_auth'
        OR (num_nonnulls(tls_subject_dn, tls_san_dns, tls_san_uri) = 1 AND num_nonnulls(jwks, jwks_uri) = 0)),
      CONSTRAINT self_signed_needs_certificate_jwks CHECK (auth_method <> 'self_signed_tls_client_auth'
        OR (jwks IS NOT NULL AND num_nonnulls(jwks_uri, tls_subject_dn, tls_san_dns, tls_san_uri) = 0))
    )
  `,
  `    CREATE TABLE client_secrets (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      client_id text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
      digest text NOT NULL UNIQUE
        CONSTRAINT digest_is_tagged_sha256 CHECK (digest ~ '^sha256:[A-Za-z0-9_-]{43}$'),
      created_at timestamptz NOT NULL DEFAULT now(),
      expires_at timestamptz
    )
  `,
  `    CREATE INDEX client_secrets_client_id ON client_secrets (client_id)
  `,
  `    -- One row per used client-assertion jti: the primary key makes "first use wins" a
    -- single atomic INSERT, across workers and instances.
    CREATE TABLE replay_detection (
      id text PRIMARY KEY,
      expires_at timestamptz NOT NULL
    )
  `,
  `    CREATE INDEX replay_detection_expires_at ON replay_detection (expires_at)
  `,
  `    -- Revoked access tokens, kept until the token would have expired anyway.
    CREATE TABLE revoked_tokens (
      jti text PRIMARY KEY,
      expires_at timestamptz NOT NULL
    )
  `,
  `    CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at)
  `,
  `    -- Running servers cache clients; this tells them at once when one changes.
    CREATE FUNCTION notify_client_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('m2m_client_changed', COALESCE(NEW.client_id, OLD.client_id));
      RETURN NULL;
    END $$
  `,
  `    CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE ON clients
      FOR EACH ROW EXECUTE FUNCTION notify_client_changed()
  `,
  `    CREATE TRIGGER client_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON client_secrets
      FOR EACH ROW EXECUTE FUNCTION notify_client_changed()
  `,
];

export async function up(knex: Knex): Promise<void> {
  // One statement per call: PGlite runs each through a prepared statement.
  for (const statement of SCHEMA) await knex.raw(statement);
}

export async function down(knex: Knex): Promise<void> {
  for (const statement of ['DROP TABLE revoked_tokens', 'DROP TABLE replay_detection', 'DROP TABLE client_secrets', 'DROP TABLE clients', 'DROP FUNCTION notify_client_changed()']) {
    await knex.raw(statement);
  }
}
