// Every endpoint of the public listener, its path and methods: anything else is 404 or 405
// before it reaches the engine. /metrics is not here: it is on the management listener
// only (management.ts). The router, the front door, the audit lines and the discovery
// metadata all read this one list.

interface Endpoint {
  path: string;
  methods: readonly string[];
  /** Where a client authenticates (so where brute force is limited), and its audit event. */
  event?: 'token' | 'introspection' | 'revocation';
}

const READ = ['GET', 'HEAD'] as const;

export const ENDPOINTS = {
  token: { path: '/token', methods: ['POST'], event: 'token' },
  introspection: { path: '/token/introspection', methods: ['POST'], event: 'introspection' },
  revocation: { path: '/token/revocation', methods: ['POST'], event: 'revocation' },
  jwks: { path: '/jwks', methods: READ },
  authorizationServer: { path: '/.well-known/oauth-authorization-server', methods: READ },
  openidConfiguration: { path: '/.well-known/openid-configuration', methods: READ },
  healthz: { path: '/healthz', methods: READ },
  readyz: { path: '/readyz', methods: READ },
} as const satisfies Record<string, Endpoint>;

const BY_PATH = new Map<string, Endpoint>(Object.values(ENDPOINTS).map((endpoint) => [endpoint.path, endpoint]));

/** The endpoint at `path`, or undefined. */
export function endpointAt(path: string): Endpoint | undefined {
  return BY_PATH.get(path);
}

/** The URLs under ISSUER that the metadata names and clients put in `aud` and `htu`. */
interface EndpointUrls {
  token: string;
  introspection: string;
  revocation: string;
  jwks: string;
}

export function endpointUrls(issuer: string): EndpointUrls {
  return {
    token: `${issuer}${ENDPOINTS.token.path}`,
    introspection: `${issuer}${ENDPOINTS.introspection.path}`,
    revocation: `${issuer}${ENDPOINTS.revocation.path}`,
    jwks: `${issuer}${ENDPOINTS.jwks.path}`,
  };
}

/**
 * What a client's assertion (and a federated client's external token, unless its issuer
 * says otherwise) may name as `aud`: the issuer or the token endpoint under ISSUER, never a
 * URL built from the request's Host header.
 */
export function assertionAudiences(issuer: string): string[] {
  return [issuer, endpointUrls(issuer).token];
}
