// What a resource API checks before it serves a DPoP-bound token (RFC 9449 §7.1 and §4.3),
// made with jose. Mirrored in docs/dpop.md; test/dpop.test.ts checks that they match and
// runs it behind a real HTTP server.
import { createHash } from 'node:crypto';

import { calculateJwkThumbprint, createRemoteJWKSet, EmbeddedJWK, jwtVerify, type JWTPayload } from 'jose';

export interface ResourceConfig {
  issuer: string; // the authorization server's ISSUER
  audience: string; // this API's URI, as registered with --audience
  jwks: ReturnType<typeof createRemoteJWKSet>; // createRemoteJWKSet(new URL(`${issuer}/jwks`))
  seen: Map<string, number>; // proof jti -> expiry; shared by every instance of this API in production
}

export class DpopRefused extends Error {}

/** The token's claims if the request is allowed; throws DpopRefused otherwise. */
export async function checkDpopRequest(
  config: ResourceConfig,
  request: { method: string; url: string; authorization: string | undefined; dpop: string | string[] | undefined },
): Promise<JWTPayload> {
  // 1. The token comes with the DPoP scheme, never as Bearer, and exactly one proof.
  const match = /^DPoP ([A-Za-z0-9._~+/-]+=*)$/.exec(request.authorization ?? '');
  if (!match) throw new DpopRefused('Authorization: DPoP <token> required');
  if (typeof request.dpop !== 'string') throw new DpopRefused('exactly one DPoP header required');
  const token = match[1]!;

  // 2. The access token: our issuer's signature, this API as audience, unexpired.
  const { payload: claims } = await jwtVerify(token, config.jwks, {
    issuer: config.issuer, audience: config.audience, typ: 'at+jwt', algorithms: ['RS256'],
  });
  const jkt = (claims.cnf as { jkt?: unknown } | undefined)?.jkt;
  if (typeof jkt !== 'string') throw new DpopRefused('the token is not DPoP-bound');

  // 3. The proof: signed by the public key in its header, recent, for this very request
  //    (its URL without query and fragment).
  const { payload: proof, protectedHeader } = await jwtVerify(request.dpop, EmbeddedJWK, {
    typ: 'dpop+jwt', algorithms: ['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA'], maxTokenAge: '60s', clockTolerance: 15,
  });
  const [url, htu] = [URL.parse(request.url), URL.parse(String(proof.htu))];
  if (proof.htm !== request.method) throw new DpopRefused('htm does not match the request');
  if (!url || !htu || `${htu.origin}${htu.pathname}` !== `${url.origin}${url.pathname}`) throw new DpopRefused('htu does not match the request');
  if (proof.ath !== createHash('sha256').update(token).digest('base64url')) throw new DpopRefused('ath does not match the token');

  // 4. The binding: the proof's key is the key the token was issued to.
  if (await calculateJwkThumbprint(protectedHeader.jwk!) !== jkt) throw new DpopRefused('the proof key is not the token\'s key');

  // 5. Each proof once (kept past the 60 s + 15 s it can be accepted for).
  const now = Date.now();
  for (const [jti, expires] of config.seen) if (expires < now) config.seen.delete(jti);
  if (typeof proof.jti !== 'string' || config.seen.has(proof.jti)) throw new DpopRefused('proof replayed');
  config.seen.set(proof.jti, now + 90_000);
  return claims;
}
