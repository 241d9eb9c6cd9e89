// RFC 8414 metadata advertising exactly what this server does; served at both well-known
// paths, since OpenID tooling looks for openid-configuration.
import { endpointUrls } from '../http/endpoints.ts';
import type { Settings } from '../settings.ts';
import { SIGNATURE_ALGS } from './algorithms.ts';
import { AUTH_METHODS_SUPPORTED } from './client-auth/index.ts';

export function metadata(settings: Settings): Record<string, unknown> {
  const { issuer } = settings;
  const urls = endpointUrls(issuer);
  return {
    issuer,
    token_endpoint: urls.token,
    jwks_uri: urls.jwks,
    introspection_endpoint: urls.introspection,
    revocation_endpoint: urls.revocation,
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
    token_endpoint_auth_signing_alg_values_supported: SIGNATURE_ALGS,
    introspection_endpoint_auth_methods_supported: AUTH_METHODS_SUPPORTED,
    introspection_endpoint_auth_signing_alg_values_supported: SIGNATURE_ALGS,
    revocation_endpoint_auth_methods_supported: AUTH_METHODS_SUPPORTED,
    revocation_endpoint_auth_signing_alg_values_supported: SIGNATURE_ALGS,
    tls_client_certificate_bound_access_tokens: true,
    dpop_signing_alg_values_supported: SIGNATURE_ALGS,
    access_token_signing_alg_values_supported: ['RS256'],
  };
}
