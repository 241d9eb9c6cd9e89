// Keys of private_key_jwt clients registered with a jwks_uri.
//
// The engine's own jwks_uri handling keeps using a key for as long as it verifies (a key the
// client withdraws from its set keeps working while the engine holds the client), and after an
// unknown kid refetches only once its cache is stale: 60 s at least, and as long as the
// client's Cache-Control says. So the sets are fetched here instead, one cache per URI: a set
// is used for CACHE_SECONDS, an unknown kid refetches at once (at most once per
// REFETCH_COOLDOWN_SECONDS, so made-up kids cannot make us hammer the client's server).
// Fetches go through the public-address fetcher (../../net/public-fetch.ts): https only,
// bounded, no redirect, public addresses only unless JWKS_URI_ALLOW_PRIVATE. Served keys of a
// kind the key policy refuses (../../clients/key-policy.ts) are ignored and logged.
import { boundedKeySet, MAX_CLIENT_KEYS, signatureKeyRefusal } from '../../clients/key-policy.ts';
import type { Logger } from '../../log.ts';
import { publicJsonFetch } from '../../net/public-fetch.ts';
import { RemoteValue } from '../../net/remote-value.ts';
import { withoutUserinfo } from '../../url-userinfo.ts';
import type { EngineClient } from '../client-metadata.ts';

export const CACHE_SECONDS = 300;
export const REFETCH_COOLDOWN_SECONDS = 5;

type Jwk = Record<string, unknown>;

/** The engine's per-client key store, as far as it is used here. */
interface EngineKeyStore {
  clear(): void;
  add(key: Jwk): void;
  fresh(): boolean;
  refresh(): Promise<void>;
}

interface JwksUriOptions {
  allowPrivate: boolean;
  /** PEM file of CAs trusted in addition to the system's. */
  caFile: string | undefined;
}

/**
 * Public signature keys of an accepted kind only: an encryption key, a (leaked) private key
 * and a key the policy refuses (an RSA key of 16384 bits…) are skipped, and said so.
 */
export function signatureKeys(body: unknown, skipped: (kid: unknown, reason: string) => void = () => {}): Jwk[] {
  const keys = (body as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('jwks_uri response is not a JWK Set');
  return keys.filter((k): k is Jwk => {
    if (typeof k !== 'object' || k === null) return false;
    // An encryption key beside the signature keys is usual: skipped without a word.
    if (k.use !== undefined && k.use !== 'sig') return false;
    const refusal = signatureKeyRefusal(k);
    if (refusal) skipped(k.kid, refusal);
    return refusal === undefined;
  });
}

/**
 * The lookup step of a jwks_uri client: fills the engine's key store of `client` from this
 * module's cache (one per engine, kept for the life of the process), and makes the engine's
 * refetch on an unknown kid go through it.
 */
export function remoteKeys(options: JwksUriOptions, logger?: Logger): (client: EngineClient) => Promise<void> {
  const fetch = publicJsonFetch({ ...options, what: 'jwks_uri', privateHint: 'JWKS_URI_ALLOW_PRIVATE is false' });
  const sets = new Map<string, RemoteValue<Jwk[]>>();
  return async (client) => {
    const uri = client.jwksUri;
    if (!uri) return;
    const id = client.clientId;
    let set = sets.get(uri);
    if (!set) {
      const shown = withoutUserinfo(uri);
      const skipped = (kid: unknown, reason: string) => logger?.warn({ client_id: id, jwks_uri: shown, kid, reason }, 'ignored a key served at a client\'s jwks_uri');
      set = new RemoteValue(async () => boundedKeySet(signatureKeys(await fetch(uri), skipped), MAX_CLIENT_KEYS, skipped),
        (err) => logger?.warn({ client_id: id, jwks_uri: shown, err: err.message }, 'fetching a client\'s jwks_uri failed'),
        REFETCH_COOLDOWN_SECONDS);
      sets.set(uri, set);
    }
    // A failed refetch keeps the keys fetched before (the client's server being briefly
    // unreachable is no reason to refuse it); without them, verification fails and says why.
    if (set.ageMs > CACHE_SECONDS * 1000) await set.refresh().catch(() => {});
    const store = (client as unknown as { asymmetricKeyStore: EngineKeyStore }).asymmetricKeyStore;
    const remote = set;
    const fill = () => {
      store.clear();
      for (const key of remote.value ?? []) store.add(key);
    };
    fill();
    // After a failed verification the engine asks fresh() and, when false, calls refresh()
    // and verifies once more: that is the refetch on an unknown kid.
    store.fresh = () => remote.fresh;
    store.refresh = async () => {
      await remote.refresh();
      fill();
    };
  };
}
