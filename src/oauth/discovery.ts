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
    // No authorization endpoint, so no response type: the empty list RFC 7591 section 2
    // gives clients that use none. (authlib's validator wants at least one; none is true.)
    response_types_supported: [],
    // OpenID Connect Discovery 1.0 section 3 requires these two. We issue no ID tokens and
    // have no end users: what they would be is the engine's default, and RS256, which the
    // section makes mandatory, is what signs our access tokens.
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
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
