// DPoP (RFC 9449): a token bound to a key the client proves it holds, per request. The
// engine verifies the proof (typ dpop+jwt, an allowed asymmetric alg, a public `jwk` in
// the header and the signature with it, htm, htu, nonce). This module configures that,
// and adds what the engine does otherwise or not at all:
// - htu is compared with the token endpoint under ISSUER, never with a URL built from the
//   request's Host header;
// - iat within PROOF_MAX_AGE (the engine allows 5 minutes, and no limit with a nonce);
// - jti single use, claimed through ReplayDetection.unique (one atomic INSERT, engine.ts)
//   under the proof key's thumbprint; the engine's own check would answer a replay with
//   invalid_grant;
// - a client registered with `--dpop` that sends no proof gets invalid_dpop_proof (the
//   engine says invalid_grant);
// - a certificate-bound client that sends a proof gets a token bound to both (see below).
import Provider, { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import * as clientCredentials from 'oidc-provider/lib/actions/grants/client_credentials.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

import type { Settings } from '../../settings.ts';

/** Proof algorithms: asymmetric only, the same list as for client assertions. */
export const DPOP_ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'] as const;
/** Oldest a proof's iat may be, seconds (RFC 9449 §11.1 leaves the window to the server). */
export const PROOF_MAX_AGE = 60;
/** Clock difference allowed either way, as for client assertions. */
export const PROOF_CLOCK_TOLERANCE = 15;

type DpopFeature = NonNullable<NonNullable<Configuration['features']>['dPoP']>;

/**
 * The engine's DPoP feature. Nonces are HMACs of the current minute under `nonceSecret`,
 * which every process reads from the database at start (storage/shared-secrets.ts), so a
 * nonce one worker or instance issued is accepted by all without a read per request. With
 * DPOP_NONCE off no secret is given: proofs carry no nonce, and the engine refuses one.
 */
export function dpopFeature(settings: Settings, nonceSecret: Buffer | undefined): DpopFeature {
  if (settings.dpopNonce && !nonceSecret) throw new Error('DPOP_NONCE=true needs the shared DPoP nonce secret');
  return {
    enabled: true,
    ...(settings.dpopNonce ? { nonceSecret } : {}),
    requireNonce: () => settings.dpopNonce,
    // Replays are refused, but not by the engine's check (which answers invalid_grant):
    // useDpop claims each jti itself, right after the engine verified the proof.
    allowReplay: true,
  };
}

/** Refuses a proof outside the iat window or seen before; claims its jti otherwise. */
async function assertFreshAndUnused(provider: Provider, proof: { thumbprint: string; jti: string; iat: number }): Promise<void> {
  const now = Math.floor(Date.now() / 1000);
  if (proof.iat < now - PROOF_MAX_AGE - PROOF_CLOCK_TOLERANCE) throw new errors.InvalidDpopProof(`DPoP proof iat is more than ${PROOF_MAX_AGE} seconds old`);
  if (proof.iat > now + PROOF_CLOCK_TOLERANCE) throw new errors.InvalidDpopProof('DPoP proof iat is in the future');
  // Kept until the proof could no longer be accepted; the jti is the key holder's, so it is
  // claimed under the key (a colon is in no client id: no clash with assertion jtis).
  const until = Math.max(now, proof.iat) + PROOF_MAX_AGE + PROOF_CLOCK_TOLERANCE;
  if (!await provider.ReplayDetection.unique(`dpop:${proof.thumbprint}`, proof.jti, until)) {
    throw new errors.InvalidDpopProof('DPoP proof jti was used before');
  }
}

/** Installs on `provider` what this module adds to the engine's DPoP (see the top). */
export function useDpop(provider: Provider, settings: Settings): void {
  // htu: the engine expects ctx.oidc.urlFor(route), which it builds from the Host header.
  // Every URL the engine builds is made under ISSUER instead, as the metadata says.
  provider.OIDCContext.prototype.urlFor = function urlFor(name: string, opt?: Record<string, unknown>) {
    return `${settings.issuer}${provider.pathFor(name, { mountPath: '', ...opt })}`;
  };

  // The engine's own client_credentials handler, given the engine's own helpers except two.
  const engine = Object.fromEntries(Object.entries(grantHelpers).map(([name, helper]) => [name, (helper as (...args: unknown[]) => unknown).bind(undefined, provider)]));
  const helpers = {
    ...engine,
    async validateDpop(ctx: KoaContextWithOIDC) {
      const proof = await grantHelpers.validateDpop(provider, ctx);
      if (proof) await assertFreshAndUnused(provider, proof);
      return proof;
    },
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
