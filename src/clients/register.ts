// Writing clients: the statements a client migration runs. Used by the CLI to render a
// migration's body, and by the first development start to create the demo client.
import type { Database } from '../storage/database.ts';
import type { AuthMethod } from './registry.ts';

export interface NewClient {
  clientId: string;
  authMethod: AuthMethod;
  audiences: string[];
  scopes: string[];
  ttl?: number | undefined;
  jwks?: { keys: Record<string, unknown>[] } | undefined;
  jwksUri?: string | undefined;
  tlsSubjectDn?: string | undefined;
  tlsSanDns?: string | undefined;
  tlsSanUri?: string | undefined;
  certificateBound?: boolean;
  dpopBound?: boolean;
  introspectAudiences?: string[];
  federatedIssuer?: string | undefined;
  federatedSubject?: string | undefined;
}

export function clientRow(client: NewClient): Record<string, unknown> {
  return {
    client_id: client.clientId,
    auth_method: client.authMethod,
    audiences: client.audiences,
    scopes: client.scopes,
    ttl: client.ttl ?? null,
    jwks: client.jwks ? JSON.stringify(client.jwks) : null,
    jwks_uri: client.jwksUri ?? null,
    tls_subject_dn: client.tlsSubjectDn ?? null,
    tls_san_dns: client.tlsSanDns ?? null,
    tls_san_uri: client.tlsSanUri ?? null,
    certificate_bound: client.certificateBound ?? false,
    dpop_bound: client.dpopBound ?? false,
    introspect_audiences: client.introspectAudiences ?? [],
    // Only federated clients name the columns, so other clients' migrations read as before.
    ...(client.federatedIssuer ? { federated_issuer: client.federatedIssuer, federated_subject: client.federatedSubject } : {}),
  };
}

export async function insertClient(db: Database, client: NewClient, secretDigest?: string): Promise<void> {
  await db.transaction(async (trx) => {
    await trx('clients').insert(clientRow(client));
    if (secretDigest) await trx('client_secrets').insert({ client_id: client.clientId, digest: secretDigest });
  });
}
