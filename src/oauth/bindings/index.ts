// Every token binding, each one module of the same shape (binding.ts), and the one rule
// about more than one: a token bound to both.
import type Provider from 'oidc-provider';

import type { TokenBinding } from './binding.ts';
import { certificateBinding } from './certificate.ts';
import { dpopBinding } from './dpop.ts';

export const TOKEN_BINDINGS: readonly TokenBinding[] = [certificateBinding, dpopBinding];

/**
 * A certificate-bound client (`--bound`) that also sends a DPoP proof gets a token carrying
 * both cnf members (RFC 8705 §3.1 and RFC 9449 §6.1 each define one; RFC 7800 lets cnf
 * hold several). The engine refuses the pair; but dropping the certificate binding would
 * break the operator's `--bound`, and dropping the proof's would hand a bearer-usable token
 * to a client that asked for DPoP. Bound to both, the token is no weaker than either.
 */
export function boundToBoth(provider: Provider): void {
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
