// DPoP (RFC 9449): a token bound to a key the client proves it holds, per request. The
// engine binds the token (cnf.jkt, token_type DPoP), enforces `--dpop`
// (dpop_bound_access_tokens) and lists the algorithms; the proof itself is checked here,
// in the engine's client_credentials grant (registered again with this check as its
// validateDpop helper):
// - typ dpop+jwt, an allowed asymmetric alg, a public `jwk` of the alg's type, the
//   signature with it (node:crypto, synchronously: the engine's check goes through
//   WebCrypto, whose hops to the thread pool and back cost about a fifth of a token);
// - htm POST, and htu the token endpoint under ISSUER, never a URL built from the
//   request's Host header;
// - iat within PROOF_MAX_AGE (the engine allows 5 minutes, and no limit with a nonce);
// - the nonce, when DPOP_NONCE asks for one, by the engine's own nonce scheme;
// - jti single use, claimed through ReplayDetection.unique (one atomic INSERT, engine.ts)
//   under the proof key's thumbprint.
// Every refusal is invalid_dpop_proof (or use_dpop_nonce), also for a `--dpop` client
// without a proof, where the engine would say invalid_grant.
import { constants, createPublicKey, hash, verify, type KeyObject } from 'node:crypto';

import Provider, { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import * as clientCredentials from 'oidc-provider/lib/actions/grants/client_credentials.js';
import ServerChallenge from 'oidc-provider/lib/helpers/challenge.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

import type { Settings } from '../../settings.ts';

/** Proof algorithms: asymmetric only, the same list as for client assertions. */
export const DPOP_ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'] as const;
/** Oldest a proof's iat may be, seconds (RFC 9449 §11.1 leaves the window to the server). */
export const PROOF_MAX_AGE = 60;
/** Clock difference allowed either way, as for client assertions. */
export const PROOF_CLOCK_TOLERANCE = 15;

type Alg = (typeof DPOP_ALGS)[number];

/** The key type each algorithm needs, and the key's RFC 7638 members, in thumbprint order. */
const KEY_TYPES: Record<Alg, { kty: string; crv?: string; members: string[] }> = {
  RS256: { kty: 'RSA', members: ['e', 'kty', 'n'] },
  PS256: { kty: 'RSA', members: ['e', 'kty', 'n'] },
  ES256: { kty: 'EC', crv: 'P-256', members: ['crv', 'kty', 'x', 'y'] },
  EdDSA: { kty: 'OKP', crv: 'Ed25519', members: ['crv', 'kty', 'x'] },
};
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

type DpopFeature = NonNullable<NonNullable<Configuration['features']>['dPoP']>;

/**
 * The engine's DPoP feature: on, for binding and `--dpop`. Its own proof check and replay
 * check do not run (useDpop replaces the first, and claims each jti itself).
 */
export function dpopFeature(): DpopFeature {
  return { enabled: true, allowReplay: true };
}

export interface Proof {
  thumbprint: string;
  jti: string;
  iat: number;
}

const refuse = (description: string) => new errors.InvalidDpopProof(description);

function part(segment: string | undefined): Record<string, unknown> {
  const bytes = Buffer.from(segment ?? '', 'base64url');
  // Only the one canonical encoding: no second spelling of one proof.
  if (!segment || bytes.toString('base64url') !== segment) throw refuse('DPoP proof is not a compact JWS');
  try {
    const value: unknown = JSON.parse(bytes.toString('utf8'));
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch { /* refused below */ }
  throw refuse('DPoP proof is not a compact JWS');
}

/** The proof key from the header: public, of the algorithm's type. */
function proofKey(alg: Alg, jwk: unknown): { key: KeyObject; thumbprint: string } {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw refuse('DPoP proof has no jwk header');
  const members = jwk as Record<string, unknown>;
  if (PRIVATE_MEMBERS.some((name) => name in members)) throw refuse('DPoP proof jwk must be a public key');
  const type = KEY_TYPES[alg];
  if (members.kty !== type.kty || members.crv !== type.crv) throw refuse(`DPoP proof jwk is not a key for ${alg}`);
  if (!type.members.every((name) => typeof members[name] === 'string')) throw refuse('DPoP proof jwk is incomplete');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: members as never, format: 'jwk' });
  } catch {
    throw refuse('DPoP proof jwk is not a usable key');
  }
  if (type.kty === 'RSA' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) throw refuse('DPoP proof RSA key is shorter than 2048 bits');
  const thumbprint = hash('sha256', JSON.stringify(Object.fromEntries(type.members.map((name) => [name, members[name]]))), 'base64url');
  return { key, thumbprint };
}

function signatureOk(alg: Alg, key: KeyObject, data: Buffer, signature: Buffer): boolean {
  switch (alg) {
    case 'RS256': return verify('sha256', data, key, signature);
    case 'PS256': return verify('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
    case 'ES256': return verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    case 'EdDSA': return verify(null, data, key, signature);
  }
}

/** Checks a proof for `POST htu` made at most PROOF_MAX_AGE ago (RFC 9449 §4.3, 1-11). */
export function checkProof(compact: string, htu: string, now = Math.floor(Date.now() / 1000)): Proof & { nonce?: string } {
  const segments = compact.split('.');
  if (segments.length !== 3) throw refuse('DPoP proof is not a compact JWS');
  const header = part(segments[0]);
  const claims = part(segments[1]);
  if (header.typ !== 'dpop+jwt') throw refuse('DPoP proof typ must be dpop+jwt');
  const alg = header.alg as Alg;
  if (!DPOP_ALGS.includes(alg)) throw refuse(`DPoP proof alg must be one of ${DPOP_ALGS.join(', ')}`);
  if ('crit' in header || 'b64' in header) throw refuse('DPoP proof has header parameters this server does not understand');
  const { key, thumbprint } = proofKey(alg, header.jwk);
  const signature = Buffer.from(segments[2]!, 'base64url');
  if (signature.toString('base64url') !== segments[2] || !signatureOk(alg, key, Buffer.from(`${segments[0]}.${segments[1]}`), signature)) {
    throw refuse('DPoP proof signature does not verify with its jwk');
  }
  const { iat, jti, htm, nonce } = claims;
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw refuse('DPoP proof must have a numeric iat');
  if (typeof jti !== 'string' || !jti || jti.length > 256) throw refuse('DPoP proof must have a jti string');
  if (nonce !== undefined && typeof nonce !== 'string') throw refuse('DPoP proof nonce must be a string');
  if (htm !== 'POST') throw refuse('DPoP proof htm mismatch');
  const url = typeof claims.htu === 'string' ? URL.parse(claims.htu) : null;
  if (url) url.search = url.hash = '';
  if (url?.href !== htu) throw refuse('DPoP proof htu mismatch');
  if (iat < now - PROOF_MAX_AGE - PROOF_CLOCK_TOLERANCE) throw refuse(`DPoP proof iat is more than ${PROOF_MAX_AGE} seconds old`);
  if (iat > now + PROOF_CLOCK_TOLERANCE) throw refuse('DPoP proof iat is in the future');
  return { thumbprint, jti, iat, ...(nonce === undefined ? {} : { nonce }) };
}

/**
 * Installs the proof check in the engine. Nonces (DPOP_NONCE) are the engine's scheme, an
 * HKDF of the current minute under `nonceSecret`, which every process reads from the
 * database at start (storage/shared-secrets.ts): a nonce that one worker or instance issued
 * is good on all of them, and checking one reads nothing.
 */
export function useDpop(provider: Provider, settings: Settings, nonceSecret: Buffer | undefined): void {
  if (settings.dpopNonce && !nonceSecret) throw new Error('DPOP_NONCE=true needs the shared DPoP nonce secret');
  const nonces = settings.dpopNonce ? new ServerChallenge(nonceSecret!, 'DPoP') : undefined;
  const tokenEndpoint = new URL(`${settings.issuer}/token`).href;

  async function validateDpop(ctx: KoaContextWithOIDC): Promise<Proof | undefined> {
    const compact = ctx.get('dpop');
    if (!compact) return undefined;
    const proof = checkProof(compact, tokenEndpoint);
    if (nonces) {
      const next = nonces.nextChallenge();
      if (proof.nonce !== next) ctx.set('dpop-nonce', next);
      if (proof.nonce === undefined) throw new errors.UseDpopNonce('nonce is required in the DPoP proof');
      if (!nonces.checkChallenge(proof.nonce)) throw new errors.UseDpopNonce('invalid nonce in DPoP proof');
    } else if (proof.nonce !== undefined) {
      throw refuse('DPoP nonces are not in use');
    }
    // Kept until the proof could no longer be accepted; the jti is the key holder's, so it
    // is claimed under the key (a colon is in no client id: no clash with assertion jtis).
    const until = Math.max(Math.floor(Date.now() / 1000), proof.iat) + PROOF_MAX_AGE + PROOF_CLOCK_TOLERANCE;
    if (!await provider.ReplayDetection.unique(`dpop:${proof.thumbprint}`, proof.jti, until)) {
      throw refuse('DPoP proof jti was used before');
    }
    return { thumbprint: proof.thumbprint, jti: proof.jti, iat: proof.iat };
  }

  // The engine's own client_credentials handler, given the engine's helpers except two.
  const engine = Object.fromEntries(Object.entries(grantHelpers).map(([name, helper]) => [name, (helper as (...args: unknown[]) => unknown).bind(undefined, provider)]));
  const helpers = {
    ...engine,
    validateDpop,
    checkDpopRequired(ctx: KoaContextWithOIDC, proof: unknown) {
      grantHelpers.checkDpopRequired(provider, ctx, proof, errors.InvalidDpopProof);
    },
  };
  provider.registerGrantType(
    clientCredentials.grantType,
    (ctx: KoaContextWithOIDC) => clientCredentials.handler(provider, helpers, ctx),
    // As the engine registers it with resource indicators on: `resource` once.
    [...clientCredentials.parameters, 'resource'],
    ['resource'],
  );

  // A certificate-bound client (`--bound`) that also sends a proof gets a token carrying
  // both cnf members (RFC 8705 §3.1 and RFC 9449 §6.1 each define one; RFC 7800 lets cnf
  // hold several). The engine refuses the pair; but dropping the certificate binding would
  // break the operator's `--bound`, and dropping the proof's would hand a bearer-usable token
  // to a client that asked for DPoP. Bound to both, the token is no weaker than either.
  const prototype = provider.ClientCredentials.prototype as unknown as { jkt?: string; setThumbprint(prop: string, input: unknown): void };
  const engineSetThumbprint = prototype.setThumbprint;
  prototype.setThumbprint = function setThumbprint(prop, input) {
    if (prop === 'jkt') {
      this.jkt = input as string;
      return;
    }
    engineSetThumbprint.call(this, prop, input);
  };
}
