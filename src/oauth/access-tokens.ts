// Verification of our own access tokens, as introspection and revocation need it: our
// published keys, our issuer, RS256 and typ at+jwt only, and no clock tolerance.
import { createLocalJWKSet, jwtVerify, type JWTPayload } from 'jose';

import type { KeySet } from '../keys/signing-keys.ts';

export interface AccessTokenClaims extends JWTPayload {
  jti: string;
  exp: number;
  iat: number;
  client_id: string;
  scope?: string;
  cnf?: { 'x5t#S256'?: string };
}

export type TokenVerifier = (token: string) => Promise<AccessTokenClaims | undefined>;

export function tokenVerifier(issuer: string, keys: KeySet): TokenVerifier {
  const jwks = createLocalJWKSet({ keys: keys.published.map((k) => k.jwk) });
  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, jwks, {
        issuer,
        typ: 'at+jwt',
        algorithms: ['RS256'],
        clockTolerance: 0,
        requiredClaims: ['exp', 'iat', 'jti', 'client_id', 'sub', 'aud'],
      });
      return payload as AccessTokenClaims;
    } catch {
      return undefined;
    }
  };
}
