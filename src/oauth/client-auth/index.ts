// Every client-authentication method, each one module of the same shape (method.ts). The
// engine (../engine.ts), the client lookup and the discovery metadata are built from this
// list: a new method is one module here and one entry below.
import { AUTH_METHODS, type AuthMethod } from '../../clients/registry.ts';
import { certificate } from './certificate.ts';
import { clientSecret } from './client-secret.ts';
import { federated } from './federated.ts';
import type { ClientAuthMethod } from './method.ts';
import { privateKeyJwt } from './private-key-jwt.ts';

export const CLIENT_AUTH_METHODS: readonly ClientAuthMethod[] = [clientSecret, privateKeyJwt, certificate, federated];

/** What discovery lists as token_endpoint_auth_methods_supported (and for introspection and revocation). */
export const AUTH_METHODS_SUPPORTED = CLIENT_AUTH_METHODS.filter((method) => method.advertised).flatMap((method) => method.engineMethods);

/** Every name the engine is told to accept. */
export const ENGINE_AUTH_METHODS = CLIENT_AUTH_METHODS.flatMap((method) => method.engineMethods);

const BY_REGISTERED = new Map<AuthMethod, ClientAuthMethod>(CLIENT_AUTH_METHODS.flatMap((method) => method.registered.map((name) => [name, method] as const)));
const unhandled = AUTH_METHODS.filter((name) => !BY_REGISTERED.has(name));
if (unhandled.length) throw new Error(`no client-authentication module for ${unhandled.join(', ')}`);

/** The module that authenticates clients registered with `name`. */
export function methodFor(name: AuthMethod): ClientAuthMethod {
  return BY_REGISTERED.get(name)!;
}
