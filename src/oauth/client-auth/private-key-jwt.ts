// private_key_jwt (RFC 7523 section 2.2): the client signs an assertion with a key of its
// registered set (`--jwks`) or of the set it serves at its jwks_uri (jwks-uri.ts). The
// engine verifies the signature; the rules added here are on the assertion's lifetime,
// `aud` and `sub`, and on how many keys one signature is checked against. Its jti is
// claimed once (ReplayDetection, engine.ts).
import { errors } from 'oidc-provider';

import { SIGNATURE_ALGS, CLOCK_TOLERANCE } from '../algorithms.ts';
import { assertionAudiences } from '../../http/endpoints.ts';
import type { Settings } from '../../settings.ts';
import { remoteKeys } from './jwks-uri.ts';
import type { ClientAuthMethod } from './method.ts';

/** The engine's per-client key store, as far as it is used here. */
interface VerifyKeyStore {
  selectForVerify(options: { alg?: string; kid?: string }): unknown[];
}

/**
 * Every signature is checked against exactly one key. The engine tries each key that matches
 * the header's alg (and kid, when there is one) until one verifies, so a made-up assertion
 * cost one verification per key of the set. No two keys of a set share a kid
 * (../../clients/key-policy.ts), so a kid selects at most one; an assertion without one selects
 * none when the set has several keys for its alg (invalid_client, the reason in the log).
 */
function oneKeyPerSignature(client: object): void {
  const store = (client as { asymmetricKeyStore: VerifyKeyStore }).asymmetricKeyStore;
  const select = store.selectForVerify.bind(store);
  store.selectForVerify = (options) => {
    const keys = select(options);
    return keys.length === 1 ? keys : [];
  };
}

/**
 * RFC 7523 leaves an assertion's lifetime to the server; its jti is kept until its exp
 * (ReplayDetection, engine.ts), so the lifetime also bounds what the replay table holds.
 */
function assertionRules(settings: Settings) {
  return async (_ctx: unknown, claims: { exp?: unknown; iat?: unknown; sub?: unknown; iss?: unknown }) => {
    const now = Math.floor(Date.now() / 1000);
    const longest = settings.maxAssertionLifetime;
    if (typeof claims.exp !== 'number' || claims.exp > now + longest + CLOCK_TOLERANCE) {
      throw new errors.InvalidClientAuth(`client assertions may be valid for ${longest} seconds at most`);
    }
    if (claims.iat !== undefined && (typeof claims.iat !== 'number' || claims.exp - claims.iat > longest)) {
      throw new errors.InvalidClientAuth(`client assertions may be valid for ${longest} seconds at most (exp - iat)`);
    }
    if (typeof claims.iat === 'number' && claims.iat > now + CLOCK_TOLERANCE) {
      throw new errors.InvalidClientAuth('client assertion issued in the future');
    }
    if (claims.sub !== claims.iss) throw new errors.InvalidClientAuth('client assertion sub must equal iss');
  };
}

export const privateKeyJwt: ClientAuthMethod = {
  registered: ['private_key_jwt'],
  engineMethods: ['private_key_jwt'],
  advertised: true,
  metadata: (record) => ({
    token_endpoint_auth_method: record.authMethod,
    ...(record.jwks ? { jwks: record.jwks } : {}),
    ...(record.jwksUri ? { jwks_uri: record.jwksUri } : {}),
  }),
  hooks: ({ settings, logger }) => ({
    configure(configuration) {
      configuration.enabledJWA = { ...configuration.enabledJWA, clientAuthSigningAlgValues: SIGNATURE_ALGS as never };
      configuration.assertJwtClientAuthClaimsAndHeader = assertionRules(settings);
    },
    install(provider) {
      // The engine would also accept URLs built from the request's Host header.
      const audiences = new Set(assertionAudiences(settings.issuer));
      provider.OIDCContext.prototype.clientJwtAuthExpectedAudience = () => audiences;
    },
    built: oneKeyPerSignature,
    found: remoteKeys({ allowPrivate: settings.jwksUriAllowPrivate, caFile: settings.jwksUriCa }, logger),
  }),
};
