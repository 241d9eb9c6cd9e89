// Keys of trusted external issuers (federated clients): a static JWKS, a jwks_uri, or the
// jwks_uri named by the issuer's OIDC discovery document. Fetched with the same fetcher as
// clients' jwks_uri (../net/public-fetch.ts: https only, size and time limits, no
// redirects, public addresses only unless the issuer has --allow-private, JWKS_URI_CA), and
// filtered by the same key policy (client-auth/jwks-uri.ts signatureKeys).
//
// A fetched set is used for CACHE_SECONDS (a SPIFFE bundle's spiffe_refresh_hint, when
// shorter, down to MIN_CACHE_SECONDS); a token whose kid is unknown refetches at once, at
// most once per REFETCH_COOLDOWN_SECONDS. When a refetch fails, the keys fetched before keep
// being used for up to MAX_STALE_SECONDS after the last successful fetch: an issuer being
// unreachable (a cluster's API server restarting) does not stop its workloads.
import { createLocalJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';

import type { IssuerRecord } from '../clients/issuers.ts';
import { boundedKeySet, MAX_ISSUER_KEYS } from '../clients/key-policy.ts';
import type { Logger } from '../log.ts';
import { publicJsonFetch, type JsonFetch } from '../net/public-fetch.ts';
import { RemoteValue } from '../net/remote-value.ts';
import { withoutUserinfo } from '../url-userinfo.ts';
import { CACHE_SECONDS, REFETCH_COOLDOWN_SECONDS, signatureKeys } from './client-auth/jwks-uri.ts';

export const MIN_CACHE_SECONDS = 30;
const MAX_STALE_SECONDS = 24 * 3600;

type Jwk = Record<string, unknown>;

export class IssuerKeysUnavailable extends Error {}

/**
 * Signature keys of a JWKS or a SPIFFE trust bundle. A bundle's JWT-SVID keys say `use:
 * jwt-svid` and carry no `alg` (the algorithm follows from kty/crv); X.509-SVID keys are
 * for TLS and are dropped. A bundle registered with --jwks is stored as this returns it,
 * with `use: sig`, and read back through here: so `sig` is a JWT-SVID key too.
 */
export function issuerSigningKeys(body: unknown, kind: IssuerRecord['kind'], skipped?: (kid: unknown, reason: string) => void): Jwk[] {
  const keys = (body as { keys?: unknown } | null)?.keys;
  if (kind !== 'spiffe' || !Array.isArray(keys)) return signatureKeys(body, skipped);
  const jwtSvid = keys.filter((k): k is Jwk => typeof k === 'object' && k !== null && (k.use === undefined || k.use === 'jwt-svid' || k.use === 'sig'))
    .map((k) => ({ ...k, use: 'sig' }));
  return signatureKeys({ keys: jwtSvid }, skipped);
}

function refreshHint(body: unknown): number | undefined {
  const hint = (body as { spiffe_refresh_hint?: unknown } | null)?.spiffe_refresh_hint;
  return typeof hint === 'number' && hint > 0 ? hint : undefined;
}

/** An issuer's keys as last fetched, and how long they count as current. */
interface FetchedKeys {
  resolver: JWTVerifyGetKey;
  cacheMs: number;
}
type IssuerKeySet = RemoteValue<FetchedKeys>;

const expired = (set: IssuerKeySet) => set.ageMs > (set.value?.cacheMs ?? 0);
// A failed refresh keeps the keys fetched before, for as long as MAX_STALE_SECONDS allows.
const usable = (set: IssuerKeySet) => set.value !== undefined && set.ageMs < MAX_STALE_SECONDS * 1000;

interface IssuerKeysOptions {
  /** JWKS_URI_CA: extra CAs trusted for issuers' https endpoints. */
  caFile: string | undefined;
  logger?: Logger | undefined;
}

export class IssuerKeys {
  readonly #fetchers: Record<'public' | 'private', JsonFetch>;
  readonly #sets = new Map<string, IssuerKeySet>();
  /** The set of each record the registry handed out, so a request computes no key. */
  readonly #byRecord = new WeakMap<IssuerRecord, IssuerKeySet>();
  readonly #logger: Logger | undefined;

  constructor({ caFile, logger }: IssuerKeysOptions) {
    const options = { caFile, what: 'issuer endpoint', privateHint: 'the issuer was added without --allow-private' };
    this.#fetchers = {
      public: publicJsonFetch({ ...options, allowPrivate: false }),
      private: publicJsonFetch({ ...options, allowPrivate: true }),
    };
    this.#logger = logger;
  }

  /** Verification keys for the issuer's tokens, fetched when stale. */
  async keys(issuer: IssuerRecord): Promise<JWTVerifyGetKey> {
    const set = this.#setFor(issuer);
    if (expired(set)) {
      await set.refresh().catch((err: unknown) => {
        if (!usable(set)) throw new IssuerKeysUnavailable(`keys of issuer ${issuer.name} are unavailable: ${(err as Error).message}`);
      });
    }
    if (!set.value) throw new IssuerKeysUnavailable(`keys of issuer ${issuer.name} are unavailable`);
    return set.value.resolver;
  }

  /** After an unknown kid: the keys again, refetched unless one was fetched within the cooldown. */
  async refetched(issuer: IssuerRecord): Promise<JWTVerifyGetKey | undefined> {
    const set = this.#setFor(issuer);
    await set.refresh().catch(() => {});
    return usable(set) ? set.value!.resolver : undefined;
  }

  #setFor(issuer: IssuerRecord): IssuerKeySet {
    const known = this.#byRecord.get(issuer);
    if (known) return known;
    // One set per issuer and key source: re-registering an issuer with other keys starts afresh.
    const source = issuer.jwks ? `static:${JSON.stringify(issuer.jwks)}` : issuer.jwksUri ? `uri:${issuer.jwksUri}` : `discovery:${issuer.issuer}`;
    const key = `${issuer.name}\u0000${issuer.allowPrivate}\u0000${source}`;
    let set = this.#sets.get(key);
    if (!set) {
      const shown = issuer.jwks ? 'static' : issuer.jwksUri ? `uri:${withoutUserinfo(issuer.jwksUri)}` : `discovery:${withoutUserinfo(issuer.issuer)}`;
      set = new RemoteValue(() => this.#load(issuer), (err) => this.#logger?.warn({ issuer: issuer.name, source: shown, err: err.message }, 'fetching an issuer\'s keys failed'), REFETCH_COOLDOWN_SECONDS);
      if (this.#sets.size > 1000) this.#sets.clear();
      this.#sets.set(key, set);
    }
    this.#byRecord.set(issuer, set);
    return set;
  }

  async #load(issuer: IssuerRecord): Promise<FetchedKeys> {
    const skipped = (kid: unknown, reason: string) => this.#logger?.warn({ issuer: issuer.name, kid, reason }, 'an issuer key was ignored');
    const fetched = (keys: Jwk[], hint: number | undefined): FetchedKeys => ({
      resolver: createLocalJWKSet({ keys: boundedKeySet(keys, MAX_ISSUER_KEYS, skipped) } as JSONWebKeySet),
      cacheMs: Math.max(MIN_CACHE_SECONDS, Math.min(CACHE_SECONDS, hint ?? CACHE_SECONDS)) * 1000,
    });
    if (issuer.jwks) return fetched(issuerSigningKeys(issuer.jwks, issuer.kind), MAX_STALE_SECONDS);
    const fetch = this.#fetchers[issuer.allowPrivate ? 'private' : 'public'];
    let uri = issuer.jwksUri;
    if (!uri) {
      const discovery = await fetch(`${issuer.issuer}/.well-known/openid-configuration`) as { issuer?: unknown; jwks_uri?: unknown } | null;
      // OpenID Connect Discovery 1.0 section 4.3: the document must name the issuer it was fetched for.
      if (discovery?.issuer !== issuer.issuer) throw new Error('the discovery document names another issuer');
      if (typeof discovery.jwks_uri !== 'string' || !discovery.jwks_uri.startsWith('https://')) throw new Error('the discovery document has no https jwks_uri');
      uri = discovery.jwks_uri;
    }
    const body = await fetch(uri);
    return fetched(issuerSigningKeys(body, issuer.kind, skipped), refreshHint(body));
  }
}
