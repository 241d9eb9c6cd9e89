// A DPoP proof for one HTTP request (RFC 9449 §4.2), made with jose. Mirrored in README.md
// and docs/dpop.md; test/dpop.test.ts checks that they match and uses it.
import { createHash, randomUUID } from 'node:crypto';

import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';

export interface DpopKey { privateKey: CryptoKey; jwk: JWK; alg: string }

/** The client's DPoP key: made once, kept in memory, and used for every request. */
export async function dpopKey(alg = 'ES256'): Promise<DpopKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { privateKey, jwk: await exportJWK(publicKey), alg };
}

/** The DPoP header for `htm htu`; `accessToken` when calling an API, `nonce` when asked. */
export async function dpopProof(key: DpopKey, htm: string, htu: string, options: { accessToken?: string; nonce?: string } = {}): Promise<string> {
  const claims: Record<string, string> = { htm, htu, jti: randomUUID() };
  if (options.accessToken) claims.ath = createHash('sha256').update(options.accessToken).digest('base64url');
  if (options.nonce) claims.nonce = options.nonce;
  return new SignJWT(claims)
    .setProtectedHeader({ typ: 'dpop+jwt', alg: key.alg, jwk: key.jwk })
    .setIssuedAt()
    .sign(key.privateKey);
}

/** What a DPoP-bound token's cnf.jkt must be for this key (RFC 7638 thumbprint). */
export function dpopThumbprint(key: DpopKey): Promise<string> {
  return calculateJwkThumbprint(key.jwk);
}
