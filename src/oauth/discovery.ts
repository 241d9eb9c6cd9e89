// RFC 8414 metadata advertising exactly what this server does; served at both well-known
// paths, since OpenID tooling looks for openid-configuration.
import type { Settings } from '../settings.ts';
import { DPOP_ALGS } from './bindings/dpop.ts';
import { ASSERTION_ALGS, AUTH_METHODS_SUPPORTED } from './engine.ts';

export function metadata(settings: Settings): Record<string, unknown> {
  const { issuer } = settings;
  return {
    issuer,
    token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`,
    introspection_endpoint: `${issuer}/token/introspection`,
    revocation_endpoint: `${issuer}/token/revocation`,
    grant_types_supported: ['client_credentials'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: AUTH_METHODS_SUPPORTED,
    token_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
    introspection_endpoint_auth_methods_supported: AUTH_METHODS_SUPPORTED,
    introspection_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
    revocation_endpoint_auth_methods_supported: AUTH_METHODS_SUPPORTED,
    revocation_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
    tls_client_certificate_bound_access_tokens: true,
    dpop_signing_alg_values_supported: DPOP_ALGS,
    access_token_signing_alg_values_supported: ['RS256'],
  };
}
