// Federated clients: external issuers of workload identities (Kubernetes service-account
// tokens, SPIFFE JWT-SVIDs, OIDC tokens of CI systems and clouds), and the (issuer, subject)
// each federated client is known by. Unique, so one external identity is one client.
import type { Knex } from 'knex';

const UP = [
  `    CREATE TABLE issuers (
      name text PRIMARY KEY
        CONSTRAINT issuer_name_format CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
      kind text NOT NULL DEFAULT 'oidc'
        CONSTRAINT issuer_kind_known CHECK (kind IN ('oidc', 'kubernetes', 'spiffe')),
      -- The iss of its tokens (an https URL), or for SPIFFE the trust domain (spiffe://example.org).
      issuer text NOT NULL UNIQUE,
      jwks jsonb
        CONSTRAINT issuer_jwks_has_keys CHECK (jsonb_typeof(jwks -> 'keys') = 'array'),
      jwks_uri text
        CONSTRAINT issuer_jwks_uri_https CHECK (jwks_uri ~ '^https://[^\\s]+$'),
      -- NULL: ISSUER or the token endpoint URL.
      audience text,
      max_lifetime integer NOT NULL DEFAULT 3600
        CONSTRAINT issuer_max_lifetime_range CHECK (max_lifetime BETWEEN 60 AND 86400),
      allow_private boolean NOT NULL DEFAULT false,
      enabled boolean NOT NULL DEFAULT true,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      -- Neither: the keys are found through OIDC discovery.
      CONSTRAINT issuer_one_key_source CHECK (num_nonnulls(jwks, jwks_uri) <= 1),
      CONSTRAINT issuer_url_or_trust_domain CHECK (CASE WHEN kind = 'spiffe'
        THEN issuer ~ '^spiffe://[a-z0-9._-]+$' AND num_nonnulls(jwks, jwks_uri) = 1
        ELSE issuer ~ '^https://[^\\s]+$' END)
    )
  `,
  `    ALTER TABLE clients
      ADD COLUMN federated_issuer text REFERENCES issuers (name) ON DELETE RESTRICT,
      ADD COLUMN federated_subject text
        CONSTRAINT federated_subject_format CHECK (federated_subject ~ '^[^\\s]+$' AND char_length(federated_subject) <= 512)
  `,
  `    ALTER TABLE clients
      ADD CONSTRAINT clients_federated_identity_unique UNIQUE (federated_issuer, federated_subject)
  `,
  `    ALTER TABLE clients DROP CONSTRAINT auth_method_known
  `,
  `    ALTER TABLE clients ADD CONSTRAINT auth_method_known CHECK (auth_method IN
      ('client_secret_basic', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth', 'federated'))
  `,
  `    ALTER TABLE clients ADD CONSTRAINT federated_needs_identity_only CHECK (CASE WHEN auth_method = 'federated'
      THEN num_nonnulls(federated_issuer, federated_subject) = 2
        AND num_nonnulls(jwks, jwks_uri, tls_subject_dn, tls_san_dns, tls_san_uri) = 0
      ELSE num_nonnulls(federated_issuer, federated_subject) = 0 END)
  `,
  `    -- Running servers cache issuers too; an empty payload tells them to drop every entry.
    CREATE FUNCTION notify_issuer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('m2m_client_changed', '');
      RETURN NULL;
    END $$
  `,
  `    CREATE TRIGGER issuers_changed AFTER INSERT OR UPDATE OR DELETE ON issuers
      FOR EACH ROW EXECUTE FUNCTION notify_issuer_changed()
  `,
];

const DOWN = [
  'DROP TRIGGER issuers_changed ON issuers',
  'DROP FUNCTION notify_issuer_changed()',
  'ALTER TABLE clients DROP CONSTRAINT federated_needs_identity_only',
  'ALTER TABLE clients DROP CONSTRAINT auth_method_known',
  `ALTER TABLE clients ADD CONSTRAINT auth_method_known CHECK (auth_method IN
      ('client_secret_basic', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'))`,
  'ALTER TABLE clients DROP CONSTRAINT clients_federated_identity_unique',
  'ALTER TABLE clients DROP COLUMN federated_subject, DROP COLUMN federated_issuer',
  'DROP TABLE issuers',
];

export async function up(knex: Knex): Promise<void> {
  // One statement per call: PGlite runs each through a prepared statement.
  for (const statement of UP) await knex.raw(statement);
}

export async function down(knex: Knex): Promise<void> {
  for (const statement of DOWN) await knex.raw(statement);
}
