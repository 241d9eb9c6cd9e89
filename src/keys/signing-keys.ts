// The signing-key schedule. Each key is one file in KEYS_DIR, named by its kid (the
// RFC 7638 thumbprint). A key is published in /jwks from the moment its file appears, and
// signs only once it has been published for longer than /jwks may be cached (plus the time
// a running server takes to notice it), so no resource API meets a kid it has not seen.
// Retiring a key deletes its private part and keeps its public part published until no
// token it signed can still be unexpired.
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { calculateJwkThumbprint, type JWK } from 'jose';

const KEY_FILE = /^sig-([A-Za-z0-9_-]{43})\.pem$/;
const RETIRED_FILE = /^sig-([A-Za-z0-9_-]{43})\.retired\.json$/;

export interface ScheduleTimes {
  /** Seconds /jwks may be cached (JWKS_MAX_AGE). */
  jwksMaxAge: number;
  /** Seconds a running server may take to notice a new key file (KEYS_RELOAD_SECONDS). */
  reloadSeconds: number;
  /** Longest token lifetime (MAX_ACCESS_TOKEN_TTL). */
  maxTokenTtl: number;
}

export type KeyState = 'signing' | 'published' | 'pending' | 'retired' | 'expired';

export interface SigningKey {
  kid: string;
  /** Public JWK, as published. */
  jwk: JWK;
  /** Private key; absent for a retired key. */
  privateKey?: KeyObject;
  /** Epoch seconds: when the key was published (file written). */
  publishedAt: number;
  /** Epoch seconds: when the key may start signing. */
  signsFrom: number;
  /** Epoch seconds, retired keys only: when it was retired and when it leaves /jwks. */
  retiredAt?: number;
  unpublishAt?: number;
}

export interface KeySet {
  /** The key that signs now. */
  signer: SigningKey | undefined;
  /** Every key in /jwks, signer first. */
  published: SigningKey[];
  all: SigningKey[];
  /** Changes when what is signed or published changes. */
  fingerprint: string;
  /** Files in KEYS_DIR that could not be used, and why; the other keys are still read. */
  problems: string[];
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

/**
 * When a key file appeared in KEYS_DIR, epoch seconds with their fraction. The inode change
 * time is set by every write, copy and move, while the modification time survives `mv`,
 * `cp -p` and archives: a key made elsewhere long ago and moved in now must not sign before
 * resource APIs can have seen it.
 */
function appearedAt(file: string): number {
  const { mtimeMs, ctimeMs } = statSync(file);
  return Math.max(mtimeMs, ctimeMs) / 1000;
}

async function publicJwk(key: KeyObject): Promise<{ kid: string; jwk: JWK }> {
  const exported = createPublicKey(key).export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(exported, 'sha256');
  return { kid, jwk: { kty: exported.kty, n: exported.n, e: exported.e, kid, alg: 'RS256', use: 'sig' } };
}

export function stateOf(key: SigningKey, set: KeySet, at = now()): KeyState {
  if (key.retiredAt !== undefined) return at < (key.unpublishAt ?? 0) ? 'retired' : 'expired';
  if (set.signer?.kid === key.kid) return 'signing';
  return at >= key.signsFrom ? 'published' : 'pending';
}

export async function readKeys(dir: string, times: ScheduleTimes, at = now()): Promise<KeySet> {
  const delay = times.jwksMaxAge + times.reloadSeconds;
  const all: SigningKey[] = [];
  // To the fraction of a second: keys that appear within one second keep their order.
  const appeared = new Map<SigningKey, number>();
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch { /* no folder yet: no keys */ }
  const problems: string[] = [];
  for (const name of names) {
    const file = join(dir, name);
    try {
      await readKeyFile(name, file);
    } catch (err) {
      problems.push(`${file}: ${(err as Error).message}`);
    }
  }
  async function readKeyFile(name: string, file: string): Promise<void> {
    const active = KEY_FILE.exec(name);
    if (active) {
      const privateKey = createPrivateKey(readFileSync(file));
      if (privateKey.asymmetricKeyType !== 'rsa' || (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
        throw new Error('signing keys must be RSA, 2048 bits or more');
      }
      const { kid, jwk } = await publicJwk(privateKey);
      if (kid !== active[1]) throw new Error(`file name does not match the key's thumbprint ${kid}`);
      const since = appearedAt(file);
      // Rounded up: a key never signs a fraction of a second before its full delay has passed.
      const key = { kid, jwk, privateKey, publishedAt: Math.floor(since), signsFrom: Math.ceil(since) + delay };
      appeared.set(key, since);
      all.push(key);
      return;
    }
    const retired = RETIRED_FILE.exec(name);
    if (retired) {
      const record = JSON.parse(readFileSync(file, 'utf8')) as { jwk: JWK; published_at: number; retired_at: number };
      all.push({
        kid: retired[1]!,
        jwk: record.jwk,
        publishedAt: record.published_at,
        signsFrom: Infinity,
        retiredAt: record.retired_at,
        unpublishAt: record.retired_at + times.reloadSeconds + times.maxTokenTtl,
      });
    }
  }
  // `keys retire` writes the retired record before it deletes the private key: a reader in
  // between sees both, and the key is retired.
  for (const key of all.filter((k) => k.retiredAt !== undefined)) {
    const stale = all.findIndex((k) => k.kid === key.kid && k.retiredAt === undefined);
    if (stale !== -1) all.splice(stale, 1);
  }
  const appearedOf = (key: SigningKey) => appeared.get(key) ?? key.publishedAt;
  all.sort((a, b) => appearedOf(a) - appearedOf(b) || a.kid.localeCompare(b.kid));
  const active = all.filter((k) => k.privateKey);
  const ready = active.filter((k) => k.signsFrom <= at);
  // The newest ready key signs; with none ready yet (a first key), the oldest active one.
  const signer = ready.at(-1) ?? active[0];
  const published = all.filter((k) => k.retiredAt === undefined || at < (k.unpublishAt ?? 0));
  published.sort((a, b) => (a === signer ? -1 : b === signer ? 1 : 0));
  const fingerprint = [signer?.kid ?? '-', ...published.map((k) => k.kid)].join(',');
  return { signer, published, all, fingerprint, problems };
}

export async function generateKey(dir: string): Promise<string> {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const { kid } = await publicJwk(privateKey);
  writeFileSync(join(dir, `sig-${kid}.pem`), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  return kid;
}

export async function retireKey(dir: string, kid: string, at = now()): Promise<void> {
  const file = join(dir, `sig-${kid}.pem`);
  const privateKey = createPrivateKey(readFileSync(file));
  const { jwk } = await publicJwk(privateKey);
  const publishedAt = Math.floor(appearedAt(file));
  writeFileSync(
    join(dir, `sig-${kid}.retired.json`),
    `${JSON.stringify({ kid, jwk, published_at: publishedAt, retired_at: at }, null, 2)}\n`,
    { mode: 0o644, flag: 'wx' },
  );
  rmSync(file);
}

/** Deletes the records of retired keys that are no longer published. */
export function forgetExpired(dir: string, set: KeySet, at = now()): string[] {
  const gone = set.all.filter((k) => k.retiredAt !== undefined && at >= (k.unpublishAt ?? 0));
  for (const key of gone) rmSync(join(dir, `sig-${key.kid}.retired.json`), { force: true });
  return gone.map((k) => k.kid);
}
