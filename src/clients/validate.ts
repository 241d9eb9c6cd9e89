// Checks on what an operator registers, before any migration is written. Each failure is
// one line naming the flag; the database CHECK constraints are the second line of defence.
import { X509Certificate } from 'node:crypto';

import { calculateJwkThumbprint, importJWK, type JWK } from 'jose';

import { hasUserinfo, withoutUserinfo } from '../url-userinfo.ts';
import { DnSyntaxError, normaliseDn } from './distinguished-name.ts';
import { keySetRefusal, MAX_CLIENT_KEYS, signatureKeyRefusal } from './key-policy.ts';

export class InputError extends Error {}

/** The shape every client id has; the clients table's CHECK constraint says the same. */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;

export function clientId(value: string): string {
  if (!CLIENT_ID_PATTERN.test(value)) throw new InputError(`client_id ${JSON.stringify(value)} is invalid: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit`);
  return value;
}

export function absoluteUri(flag: string, value: string, httpsOnly = false): string {
  const shown = JSON.stringify(withoutUserinfo(value));
  // Credentials would be sent with every fetch, stored in a migration and printed by list.
  if (hasUserinfo(value)) throw new InputError(`${flag} ${shown} must not carry user:password@ (credentials in a URL are refused)`);
  // URL.parse drops or percent-encodes what the raw string keeps (line terminators among
  // them), and the raw string is what gets registered: so only printable ASCII is accepted.
  if (!/^[\x21-\x7E]+$/.test(value)) throw new InputError(`${flag} ${shown} must be printable ASCII without spaces: percent-encode anything else`);
  const url = URL.parse(value);
  if (!url || !/^[a-z][a-z0-9+.-]*:/i.test(value) || url.hash) {
    throw new InputError(`${flag} ${shown} is not an absolute URI without a fragment`);
  }
  if (url.username || url.password) throw new InputError(`${flag} ${shown} must not carry user:password@ (credentials in a URL are refused)`);
  if (httpsOnly && url.protocol !== 'https:') throw new InputError(`${flag} ${shown} must be an https:// URL`);
  return value;
}

export function uriList(flag: string, value: string): string[] {
  const list = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (!list.length) throw new InputError(`${flag} needs at least one URI`);
  return [...new Set(list.map((uri) => absoluteUri(flag, uri)))];
}

export function scopes(value: string | undefined): string[] {
  if (value === undefined) return [];
  const list = value.split(' ').filter(Boolean);
  for (const scope of list) {
    if (!SCOPE_TOKEN.test(scope)) throw new InputError(`--scope ${JSON.stringify(scope)} is not a valid scope token (RFC 6749 section 3.3)`);
  }
  return [...new Set(list)];
}

export function seconds(flag: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new InputError(`${flag} ${JSON.stringify(value)} must be a whole number of seconds from ${min} to ${max}`);
  }
  return Number(value);
}

/** Parsed by the same code that matches it at authentication, so what passes here matches as written. */
export function subjectDn(value: string): string {
  if (!value.trim()) throw new InputError('--subject-dn is empty');
  try {
    normaliseDn(value);
  } catch (err) {
    const reason = err instanceof DnSyntaxError ? `: ${err.message}` : '';
    throw new InputError(`--subject-dn ${JSON.stringify(value)} is not an RFC 4514 distinguished name${reason}`);
  }
  return value;
}

export function dnsName(value: string): string {
  if (!/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(value)) {
    throw new InputError(`--san-dns ${JSON.stringify(value)} is not a DNS name`);
  }
  return value.toLowerCase();
}

/**
 * A JWKS of public signing keys only, at most `maxKeys` of them, no kid twice; a private
 * member anywhere refuses the whole set.
 */
export async function publicJwks(text: string, source: string, maxKeys = MAX_CLIENT_KEYS): Promise<{ keys: JWK[] }> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new InputError(`${source} is not JSON`);
  }
  const keys = (parsed as { keys?: unknown }).keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new InputError(`${source} must be a JWK Set with at least one key`);
  const tooMany = keySetRefusal(keys as JWK[], maxKeys);
  if (tooMany) throw new InputError(`${source} is refused: ${tooMany}`);
  for (const [i, key] of keys.entries()) {
    const jwk = key as JWK;
    if (typeof jwk !== 'object' || jwk === null) throw new InputError(`${source}: key ${i} is not an object`);
    const refusal = signatureKeyRefusal(jwk);
    if (refusal) throw new InputError(`${source}: key ${i} is refused: ${refusal}`);
    const alg = jwk.alg ?? (jwk.kty === 'RSA' ? 'RS256' : jwk.kty === 'EC' ? (jwk.crv === 'P-384' ? 'ES384' : 'ES256') : 'EdDSA');
    try {
      await importJWK(jwk, alg);
    } catch {
      throw new InputError(`${source}: key ${i} is not a usable ${alg} public key`);
    }
    jwk.kid ??= await calculateJwkThumbprint(jwk);
  }
  // Again with the kids given to keys that had none: two copies of one key are one kid.
  const refusal = keySetRefusal(keys as JWK[], maxKeys);
  if (refusal) throw new InputError(`${source} is refused: ${refusal}`);
  return { keys: keys as JWK[] };
}

/** A self-signed client certificate, registered as a JWK carrying it (x5c) and its thumbprint. */
export function certificateJwks(pem: string, source: string): { keys: JWK[] } {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw new InputError(`${source} is not a PEM certificate`);
  }
  const jwk = cert.publicKey.export({ format: 'jwk' }) as JWK;
  const thumbprint = Buffer.from(cert.fingerprint256.replace(/:/g, ''), 'hex').toString('base64url');
  return { keys: [{ ...jwk, x5c: [cert.raw.toString('base64')], 'x5t#S256': thumbprint } as JWK] };
}
