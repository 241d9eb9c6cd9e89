// tls_client_auth and self_signed_tls_client_auth (RFC 8705 section 2): the client proves
// itself with the certificate it presents. Where the certificate comes from and what it
// proves (TLS handshake or trusted proxy, TLS_CLIENT_CA, subject and SAN matching) is
// ../client-certificates.ts; the engine compares a self-signed certificate with the
// client's registered one (its `jwks`).
import type { Configuration } from 'oidc-provider';

import type { ClientAuthMethod } from './method.ts';

type MtlsFeature = NonNullable<NonNullable<Configuration['features']>['mTLS']>;

/** Adds `feature` to the engine's mTLS feature, which the certificate binding shares. */
export function withMtls(configuration: Configuration, feature: MtlsFeature): void {
  const features = (configuration.features ??= {});
  features.mTLS = { ...features.mTLS, ...feature, enabled: true } as MtlsFeature;
}

export const certificate: ClientAuthMethod = {
  registered: ['tls_client_auth', 'self_signed_tls_client_auth'],
  engineMethods: ['tls_client_auth', 'self_signed_tls_client_auth'],
  advertised: true,
  metadata: (record) => ({
    token_endpoint_auth_method: record.authMethod,
    ...(record.jwks ? { jwks: record.jwks } : {}),
    ...(record.tlsSubjectDn ? { tls_client_auth_subject_dn: record.tlsSubjectDn } : {}),
    ...(record.tlsSanDns ? { tls_client_auth_san_dns: record.tlsSanDns } : {}),
    ...(record.tlsSanUri ? { tls_client_auth_san_uri: record.tlsSanUri } : {}),
  }),
  hooks: ({ certificates }) => ({
    configure(configuration) {
      withMtls(configuration, {
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => certificates.getCertificate(ctx),
        certificateAuthorized: (ctx) => certificates.certificateAuthorized(ctx),
        certificateSubjectMatches: (ctx, property, expected) => certificates.certificateSubjectMatches(ctx, property, expected),
      });
    },
  }),
};
