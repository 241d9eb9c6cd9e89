// Keys of private_key_jwt clients registered with a jwks_uri.
//
// The engine's own jwks_uri handling keeps using a key for as long as it verifies (a key the
// client withdraws from its set keeps working while the engine holds the client), and after an
// unknown kid refetches only once its cache is stale: 60 s at least, and as long as the
// client's Cache-Control says. So the sets are fetched here instead, one cache per URI: a set
// is used for CACHE_SECONDS, an unknown kid refetches at once (at most once per
// REFETCH_COOLDOWN_SECONDS, so made-up kids cannot make us hammer the client's server), and a
// fetch is https only, bounded in time and size, follows no redirect, and reaches public
// addresses only unless JWKS_URI_ALLOW_PRIVATE: the check is on the addresses a name resolves
// to, so no DNS name can point the server at its loopback or an internal network.
import { lookup } from 'node:dns';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import type { LookupFunction } from 'node:net';
import { rootCertificates } from 'node:tls';

import ipaddr from 'ipaddr.js';
import type Provider from 'oidc-provider';

import type { Logger } from '../log.ts';
import { SettingError } from '../settings.ts';

export const CACHE_SECONDS = 300;
export const REFETCH_COOLDOWN_SECONDS = 5;
const TIMEOUT_MS = 3000;
const MAX_BYTES = 64 * 1024;

type Jwk = Record<string, unknown>;

/** The engine's per-client key store, as far as it is used here. */
interface EngineKeyStore {
  clear(): void;
  add(key: Jwk): void;
  fresh(): boolean;
  refresh(): Promise<void>;
}

/** An ordinary public unicast address: not loopback, private, link-local, CGNAT, multicast, reserved… */
export function isPublicAddress(address: string): boolean {
  return ipaddr.isValid(address) && ipaddr.process(address).range() === 'unicast';
}

// Every resolved address must be public: picking the public one of a mixed answer would
// leave the choice to whoever controls the DNS.
const publicOnlyLookup: LookupFunction = (hostname, options, callback) => {
  lookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err, '');
    const refused = addresses.find((a) => !isPublicAddress(a.address));
    if (refused) return callback(new Error(`${hostname} resolves to ${refused.address}, not a public address (JWKS_URI_ALLOW_PRIVATE is false)`), '');
    if (options.all) return callback(null, addresses);
    return callback(null, addresses[0]!.address, addresses[0]!.family);
  });
};

export interface JwksUriOptions {
  allowPrivate: boolean;
  /** PEM file of CAs trusted in addition to the system's. */
  caFile: string | undefined;
}

function readCa(file: string): string {
  let pem = '';
  try {
    pem = readFileSync(file, 'utf8');
  } catch { /* reported below */ }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new SettingError(`setting JWKS_URI_CA=${JSON.stringify(file)} is invalid: expected a readable PEM file of CA certificates`);
  }
  return pem;
}

function fetcher({ allowPrivate, caFile }: JwksUriOptions): (uri: string) => Promise<unknown> {
  const ca = caFile === undefined ? undefined : readCa(caFile);
  const agent = new Agent({
    keepAlive: true,
    ...(ca ? { ca: [...rootCertificates, ca] } : {}),
    ...(allowPrivate ? {} : { lookup: publicOnlyLookup }),
  });
  return (uri) => new Promise((resolve, reject) => {
    const url = new URL(uri);
    if (url.protocol !== 'https:') return reject(new Error('jwks_uri is not an https:// URL'));
    // An address literal is connected to without a lookup, so it is checked here.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (!allowPrivate && ipaddr.isValid(host) && !isPublicAddress(host)) {
      return reject(new Error(`${host} is not a public address (JWKS_URI_ALLOW_PRIVATE is false)`));
    }
    const req = request(url, { agent, headers: { accept: 'application/json' }, signal: AbortSignal.timeout(TIMEOUT_MS) }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return reject(new Error(`jwks_uri answered ${res.statusCode}`));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BYTES) req.destroy(new Error(`jwks_uri response exceeds ${MAX_BYTES} bytes`));
        else chunks.push(chunk);
      });
      res.on('error', reject);
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          reject(new Error('jwks_uri response is not JSON'));
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** Public signature keys only: an encryption key or a (leaked) private key in the set is skipped. */
function signatureKeys(body: unknown): Jwk[] {
  const keys = (body as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('jwks_uri response is not a JWK Set');
  return keys.filter((k): k is Jwk => typeof k === 'object' && k !== null
    && ['RSA', 'EC', 'OKP'].includes(k.kty) && (k.use === undefined || k.use === 'sig') && !('d' in k));
}

class RemoteSet {
  keys: Jwk[] = [];
  #fetchedAt = -Infinity;
  #attemptedAt = -Infinity;
  #failure: Error | undefined;
  #pending: Promise<void> | undefined;

  readonly #uri: string;
  readonly #fetch: (uri: string) => Promise<unknown>;
  readonly #onFailure: (err: Error) => void;

  constructor(uri: string, fetch: (uri: string) => Promise<unknown>, onFailure: (err: Error) => void) {
    this.#uri = uri;
    this.#fetch = fetch;
    this.#onFailure = onFailure;
  }

  get expired(): boolean {
    return Date.now() - this.#fetchedAt > CACHE_SECONDS * 1000;
  }

  /** A fetch began within the cooldown and did not fail: the keys are as new as they may get. */
  get fresh(): boolean {
    return !this.#failure && Date.now() - this.#attemptedAt < REFETCH_COOLDOWN_SECONDS * 1000;
  }

  /**
   * Fetches the set, unless a fetch is under way (joined) or one began within the cooldown
   * (then it settles as that one did, so the last failure is what a refused client is told).
   */
  load(): Promise<void> {
    if (this.#pending) return this.#pending;
    if (Date.now() - this.#attemptedAt < REFETCH_COOLDOWN_SECONDS * 1000) {
      return this.#failure ? Promise.reject(this.#failure) : Promise.resolve();
    }
    this.#attemptedAt = Date.now();
    this.#pending = this.#fetch(this.#uri)
      .then((body) => {
        this.keys = signatureKeys(body);
        this.#fetchedAt = Date.now();
        this.#failure = undefined;
      })
      .catch((err: unknown) => {
        this.#failure = err instanceof Error ? err : new Error(String(err));
        this.#onFailure(this.#failure);
        throw this.#failure;
      })
      .finally(() => { this.#pending = undefined; });
    return this.#pending;
  }
}

/** Serves jwks_uri clients' keys from this module's cache instead of the engine's fetching. */
export function useRemoteJwks(provider: Provider, options: JwksUriOptions, logger?: Logger): void {
  const fetch = fetcher(options);
  const sets = new Map<string, RemoteSet>();
  const find = provider.Client.find.bind(provider.Client);
  provider.Client.find = async (id: string) => {
    const client = await find(id);
    const uri = client?.jwksUri;
    if (!client || !uri) return client;
    let set = sets.get(uri);
    if (!set) {
      set = new RemoteSet(uri, fetch, (err) => logger?.warn({ client_id: id, jwks_uri: uri, err: err.message }, 'fetching a client\'s jwks_uri failed'));
      sets.set(uri, set);
    }
    // A failed refetch keeps the keys fetched before (the client's server being briefly
    // unreachable is no reason to refuse it); without them, verification fails and says why.
    if (set.expired) await set.load().catch(() => {});
    const store = (client as unknown as { asymmetricKeyStore: EngineKeyStore }).asymmetricKeyStore;
    const remote = set;
    const fill = () => {
      store.clear();
      for (const key of remote.keys) store.add(key);
    };
    fill();
    // After a failed verification the engine asks fresh() and, when false, calls refresh()
    // and verifies once more: that is the refetch on an unknown kid.
    store.fresh = () => remote.fresh;
    store.refresh = async () => {
      await remote.load();
      fill();
    };
    return client;
  };
}
