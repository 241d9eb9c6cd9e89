// DPoP (RFC 9449): a token bound to a key the client proves it holds, per request. The
// proof at the token endpoint is checked here, in place of the engine's check, which
// imports the header's key anew for every proof (through WebCrypto, as costly as the
// signature check itself); a client proves with one key for a long time, so its imported
// key and thumbprint are kept (ProofKeys). jose still parses and verifies each proof: typ
// dpop+jwt, an allowed asymmetric alg, a public `jwk` of a kind the key policy accepts
// (../../clients/key-policy.ts: no RSA key that costs seconds to verify), no `crit`, the
// signature. Then, as the engine would: iat and jti present, htm, htu, the nonce. And what
// the engine does otherwise or not at all:
// - htu is compared with the token endpoint under ISSUER, never with a URL built from the
//   request's Host header;
// - iat within PROOF_MAX_AGE (the engine allows 5 minutes, and no limit with a nonce);
// - jti single use, claimed through ReplayDetection.unique (one atomic INSERT, engine.ts)
//   under the proof key's thumbprint, while the token is made; the engine's own check would
//   answer a replay with invalid_grant;
// - a client registered with `--dpop` that sends no proof gets invalid_dpop_proof (the
//   engine says invalid_grant);
// - a certificate-bound client that sends a proof gets a token bound to both (index.ts).
// The proof key cache lives as long as the engine, which is made once per process.
import { calculateJwkThumbprint, importJWK, jwtVerify, type JWK, type JWTHeaderParameters } from 'jose';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import type Provider from 'oidc-provider';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

import { signatureKeyRefusal } from '../../clients/key-policy.ts';
import { endpointUrls } from '../../http/endpoints.ts';
import { CLOCK_TOLERANCE, SIGNATURE_ALGS } from '../algorithms.ts';
import type { TokenBinding } from './binding.ts';

/** Oldest a proof's iat may be, seconds (RFC 9449 §11.1 leaves the window to the server). */
const PROOF_MAX_AGE = 60;
/** Without a nonce the engine refuses (or answers use_dpop_nonce to) an iat further off. */
const NONCE_WINDOW = 300;
/** Proof keys kept imported; the least recently used goes first. */
const PROOF_KEYS = 1024;
/** A header's `jwk` longer than this (an RSA-4096 key is ~750 characters) is not kept. */
const PROOF_KEY_MAX_CHARS = 2048;

interface ProofKey {
  key: CryptoKey;
  thumbprint: string;
}

/** Verified proof, as the engine's grant handler takes it. */
interface Proof {
  thumbprint: string;
  jti: string;
  iat: number;
}

/** Imports a proof's `jwk` for `alg`, refusing a private key and a kind the key policy refuses. */
async function importProofKey(jwk: JWK, alg: string): Promise<ProofKey> {
  const refusal = signatureKeyRefusal(jwk);
  if (refusal) throw new errors.InvalidDpopProof(`DPoP proof jwk refused: ${refusal}`);
  // A key for this alg only, as jose's EmbeddedJWK has it.
  if (jwk.alg !== undefined && jwk.alg !== alg) throw new errors.InvalidDpopProof('DPoP proof jwk is for another alg');
  if (jwk.ext !== undefined && typeof jwk.ext !== 'boolean') throw new errors.InvalidDpopProof('DPoP proof jwk ext must be a boolean');
  const key = await importJWK(jwk, alg);
  if (key instanceof Uint8Array || key.type !== 'public') throw new errors.InvalidDpopProof('DPoP proof jwk must be a public key');
  return { key, thumbprint: await calculateJwkThumbprint(jwk) };
}

/**
 * Imported proof keys by alg and `jwk`. A refused key is not kept: refused keys cost no
 * signature check, and keeping them would let a client push good keys out.
 */
class ProofKeys {
  readonly #keys = new Map<string, Promise<ProofKey>>();
  readonly #imported: (thumbprint: string) => void;

  /** `imported`: told each import's thumbprint (a debug log line shows the cache at work). */
  constructor(imported: (thumbprint: string) => void) {
    this.#imported = imported;
  }

  get(header: JWTHeaderParameters): Promise<ProofKey> {
    const { jwk, alg } = header;
    if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw new errors.InvalidDpopProof('DPoP proof has no jwk header');
    const id = `${alg}.${JSON.stringify(jwk)}`;
    let key = this.#keys.get(id);
    if (key) {
      this.#keys.delete(id);
    } else {
      const imported = importProofKey(jwk, alg!);
      key = imported;
      imported.then(({ thumbprint }) => this.#imported(thumbprint), () => {
        if (this.#keys.get(id) === imported) this.#keys.delete(id);
      });
      if (id.length > PROOF_KEY_MAX_CHARS) return key;
      if (this.#keys.size >= PROOF_KEYS) this.#keys.delete(this.#keys.keys().next().value!);
    }
    this.#keys.set(id, key);
    return key;
  }
}

/**
 * The proof in the request's DPoP header, verified (see the top), or undefined without one.
 * Nonces are checked and handed out as the engine does (`DPoP-Nonce`, use_dpop_nonce).
 */
async function verifyProof(provider: Provider, ctx: KoaContextWithOIDC, keys: ProofKeys, tokenEndpoint: string, requireNonce: boolean): Promise<Proof | undefined> {
  const jwt = ctx.get('DPoP');
  if (!jwt) return undefined;
  const nonces = instance(provider).DPoPNonces;
  const next = nonces?.nextChallenge();
  let proof: Proof;
  let nonce: unknown;
  try {
    let used: ProofKey | undefined;
    const { payload } = await jwtVerify(jwt, async (header) => (used = await keys.get(header)).key, { algorithms: SIGNATURE_ALGS, typ: 'dpop+jwt' });
    if (typeof payload.iat !== 'number' || !payload.iat) throw new errors.InvalidDpopProof('DPoP proof must have a iat number property');
    if (typeof payload.jti !== 'string' || !payload.jti) throw new errors.InvalidDpopProof('DPoP proof must have a jti string property');
    ({ nonce } = payload);
    if (nonce !== undefined && typeof nonce !== 'string') throw new errors.InvalidDpopProof('DPoP proof nonce must be a string');
    if (!nonce && Math.abs(Math.floor(Date.now() / 1000) - payload.iat) > NONCE_WINDOW) {
      if (next) {
        ctx.set('DPoP-Nonce', next);
        throw new errors.UseDpopNonce('DPoP proof iat is not recent enough, use a DPoP nonce instead');
      }
      throw new errors.InvalidDpopProof('DPoP proof iat is not recent enough');
    }
    if (nonce && !nonces) throw new errors.InvalidDpopProof('DPoP nonces are not supported');
    if (payload.htm !== ctx.method) throw new errors.InvalidDpopProof('DPoP proof htm mismatch');
    const htu = typeof payload.htu === 'string' ? URL.parse(payload.htu) : null;
    if (htu) {
      htu.hash = '';
      htu.search = '';
    }
    if (htu?.href !== tokenEndpoint) throw new errors.InvalidDpopProof('DPoP proof htu mismatch');
    proof = { thumbprint: used!.thumbprint, jti: payload.jti, iat: payload.iat };
  } catch (err) {
    if (err instanceof errors.InvalidDpopProof || err instanceof errors.UseDpopNonce) throw err;
    throw new errors.InvalidDpopProof('invalid DPoP key binding', { cause: err });
  }
  if (next && (!nonce ? requireNonce : !nonces!.checkChallenge(nonce as string))) {
    ctx.set('DPoP-Nonce', next);
    throw new errors.UseDpopNonce(nonce ? 'invalid nonce in DPoP proof' : 'nonce is required in the DPoP proof');
  }
  if (next && nonce !== next) ctx.set('DPoP-Nonce', next);
  return proof;
}

/**
 * Refuses a proof outside the iat window at once; then claims its jti, and returns the
 * claim, which refuses a proof seen before. The claim is a database round trip: the grant
 * goes on meanwhile (the token is made and signed), and the answer waits for the claim.
 */
function claimFresh(provider: Provider, proof: Proof): Promise<void> {
  const now = Math.floor(Date.now() / 1000);
  if (proof.iat < now - PROOF_MAX_AGE - CLOCK_TOLERANCE) throw new errors.InvalidDpopProof(`DPoP proof iat is more than ${PROOF_MAX_AGE} seconds old`);
  if (proof.iat > now + CLOCK_TOLERANCE) throw new errors.InvalidDpopProof('DPoP proof iat is in the future');
  // Kept until the proof could no longer be accepted; the jti is the key holder's, so it is
  // claimed under the key (a colon is in no client id: no clash with assertion jtis).
  const until = Math.max(now, proof.iat) + PROOF_MAX_AGE + CLOCK_TOLERANCE;
  const claim = provider.ReplayDetection.unique(`dpop:${proof.thumbprint}`, proof.jti, until).then((first) => {
    if (!first) throw new errors.InvalidDpopProof('DPoP proof jti was used before');
  });
  // Awaited once the grant is done; if the grant fails first, its error is the answer.
  claim.catch(() => {});
  return claim;
}

/**
 * DPoP-bound tokens. Nonces are derived (HKDF) from the current minute under the shared
 * nonce secret, which every process reads from the database at start
 * (storage/shared-secrets.ts), so a nonce one worker or instance issued is accepted by all
 * without a read per request. With DPOP_NONCE off no secret is given: proofs carry no
 * nonce, and the engine refuses one.
 */
export const dpopBinding: TokenBinding = {
  name: 'dpop',
  metadata: (record) => ({ dpop_bound_access_tokens: record.dpopBound }),
  hooks: ({ settings, dpopNonceSecret, logger }) => {
    if (settings.dpopNonce && !dpopNonceSecret) throw new Error('DPOP_NONCE=true needs the shared DPoP nonce secret');
    const keys = new ProofKeys((jkt) => logger?.debug({ jkt }, 'imported a DPoP proof key'));
    // Proofs are checked at the token endpoint only: its URL under ISSUER, parsed once.
    const tokenEndpoint = new URL(endpointUrls(settings.issuer).token).href;
    const claims = new WeakMap<KoaContextWithOIDC, Promise<void>>();
    return {
      configure(configuration) {
        configuration.enabledJWA = { ...configuration.enabledJWA, dPoPSigningAlgValues: [...SIGNATURE_ALGS] as never };
        configuration.features = {
          ...configuration.features,
          dPoP: {
            enabled: true,
            ...(settings.dpopNonce ? { nonceSecret: dpopNonceSecret } : {}),
            requireNonce: () => settings.dpopNonce,
            // Replays are refused, but not by the engine's check (which answers invalid_grant):
            // validateDpop below verifies proofs and claims each jti itself.
            allowReplay: true,
          },
        };
      },
      grantHelpers: (provider) => ({
        async validateDpop(ctx: KoaContextWithOIDC) {
          const proof = await verifyProof(provider, ctx, keys, tokenEndpoint, settings.dpopNonce);
          if (proof) claims.set(ctx, claimFresh(provider, proof));
          return proof;
        },
        checkDpopRequired(ctx: KoaContextWithOIDC, proof: unknown) {
          grantHelpers.checkDpopRequired(provider, ctx, proof, errors.InvalidDpopProof);
        },
      }),
      // A proof seen before (or a database that did not answer) replaces the token made
      // meanwhile with the refusal: the token is never sent, logged or counted.
      settle: (ctx) => claims.get(ctx),
    };
  },
};
