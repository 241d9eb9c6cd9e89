// Verification of our own access tokens, as introspection and revocation need it: our
// published keys, our issuer, RS256 and typ at+jwt only, and no clock tolerance.
//
// These are tokens we signed ourselves, in one shape, so this checks exactly that shape
// with node:crypto and a KeyObject imported once per key: jose's jwtVerify verifies through
// WebCrypto, which hands each signature to the thread pool and back, a cost felt per
// introspection request (docs/performance.md).
//
// A resource API introspects the same token on every call it receives with it, so a token
// whose signature checked out is remembered (by its SHA-256, never the token itself, up to
// VERIFIED_MAX per key set): the signature is not checked again, the claims that depend on
// the time are.
import { createPublicKey, hash, verify, type KeyObject } from 'node:crypto';

import type { JWTPayload } from 'jose';

import type { KeySet } from '../keys/signing-keys.ts';

export interface AccessTokenClaims extends JWTPayload {
  jti: string;
  exp: number;
  iat: number;
  client_id: string;
  sub: string;
  aud: string | string[];
  scope?: string;
  cnf?: { 'x5t#S256'?: string; jkt?: string };
}

export type TokenVerifier = (token: string) => Promise<AccessTokenClaims | undefined>;

const SEGMENT = /^[A-Za-z0-9_-]+$/;
const VERIFIED_MAX = 10_000;

/**
 * The bytes of a base64url segment, only if it is their one canonical encoding: Node's
 * decoder ignores a stray last character and non-zero padding bits, which would let many
 * strings stand for one token (RFC 7515 §2, RFC 4648 §3.5).
 */
function decode(segment: string): Buffer | undefined {
  const bytes = Buffer.from(segment, 'base64url');
  return bytes.toString('base64url') === segment ? bytes : undefined;
}

function json(segment: string): Record<string, unknown> | undefined {
  const bytes = decode(segment);
  if (!bytes) return undefined;
  try {
    const value: unknown = JSON.parse(bytes.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}

const isString = (v: unknown): v is string => typeof v === 'string';

/** The header of a token this server signs: nothing more, nothing less. */
function headerOk(header: Record<string, unknown>): boolean {
  return header.alg === 'RS256' && header.typ === 'at+jwt' && isString(header.kid)
    && Object.keys(header).every((name) => name === 'alg' || name === 'typ' || name === 'kid');
}

/** The claims a token must carry, whenever it is checked. */
function claimsOk(claims: Record<string, unknown>, issuer: string): claims is AccessTokenClaims {
  const { iss, exp, iat, nbf, jti, client_id: clientId, sub, aud, scope } = claims;
  return iss === issuer
    && typeof exp === 'number' && typeof iat === 'number'
    && (nbf === undefined || typeof nbf === 'number')
    && isString(jti) && isString(clientId) && isString(sub)
    && (isString(aud) || (Array.isArray(aud) && aud.length > 0 && aud.every(isString)))
    && (scope === undefined || isString(scope));
}

/** Whether the claims are in force now (no clock tolerance). */
function currentlyValid(claims: AccessTokenClaims): boolean {
  const now = Math.floor(Date.now() / 1000);
  return claims.exp > now && (claims.nbf === undefined || claims.nbf <= now);
}

export function tokenVerifier(issuer: string, keys: KeySet): TokenVerifier {
  const byKid = new Map<string, { key: KeyObject; signatureBytes: number }>(keys.published.map((k) => {
    const key = createPublicKey({ key: k.jwk, format: 'jwk' });
    return [k.kid, { key, signatureBytes: Math.ceil((key.asymmetricKeyDetails?.modulusLength ?? 0) / 8) }];
  }));
  const verified = new Map<string, AccessTokenClaims>();

  const check = (token: string): AccessTokenClaims | undefined => {
    const parts = token.split('.');
    if (parts.length !== 3 || !parts.every((part) => SEGMENT.test(part))) return undefined;
    const [encodedHeader, encodedClaims, signature] = parts as [string, string, string];
    const header = json(encodedHeader);
    if (!header || !headerOk(header)) return undefined;
    const published = byKid.get(header.kid as string);
    const signatureBytes = decode(signature);
    if (!published || signatureBytes?.length !== published.signatureBytes) return undefined;
    if (!verify('sha256', Buffer.from(`${encodedHeader}.${encodedClaims}`), published.key, signatureBytes)) return undefined;
    const claims = json(encodedClaims);
    return claims && claimsOk(claims, issuer) ? Object.freeze(claims) : undefined;
  };

  return async (token) => {
    const digest = hash('sha256', token, 'base64url');
    let claims = verified.get(digest);
    if (!claims) {
      claims = check(token);
      if (!claims) return undefined;
      // Oldest first out: a Map iterates in insertion order.
      if (verified.size >= VERIFIED_MAX) verified.delete(verified.keys().next().value!);
      verified.set(digest, claims);
    }
    return currentlyValid(claims) ? claims : undefined;
  };
}
