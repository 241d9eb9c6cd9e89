// The signing-key schedule, kept in the database every instance shares. A key is published
// in /jwks from the moment it is added, and signs only once it has been published for
// longer than /jwks may be cached plus the time a running server takes to notice it, so no
// resource API meets a kid it has not seen; the newest such key signs (the first key of an
// empty database at once). Retiring a key deletes its private part and keeps its public
// part published until no token it signed can still be unexpired. Every time is the
// database's clock, and every change is made under one advisory lock: all instances reach
// the same answer, and two of them racing to add a key add it once.
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';

import { calculateJwkThumbprint, type JWK } from 'jose';

import { SettingError } from '../settings.ts';
import type { Database } from '../storage/database.ts';
import { reencryptSharedSecrets } from '../storage/shared-secrets.ts';
import type { KeyEncryption } from './key-encryption.ts';

/** Every change to the schedule holds this transaction-level advisory lock. */
const SCHEDULE_LOCK = 0x6d326d6b;

export interface ScheduleTimes {
  /** Seconds /jwks may be cached (JWKS_MAX_AGE). */
  jwksMaxAge: number;
  /** Seconds a running server may take to notice a change (KEYS_RELOAD_SECONDS). */
  reloadSeconds: number;
  /** Longest token lifetime (MAX_ACCESS_TOKEN_TTL). */
  maxTokenTtl: number;
}

const signingDelay = (times: ScheduleTimes) => times.jwksMaxAge + times.reloadSeconds;
/** One interval for the slowest instance to stop signing with it, one more for clocks that differ between hosts. */
const unpublishDelay = (times: ScheduleTimes) => 2 * times.reloadSeconds + times.maxTokenTtl;

export type KeyState = 'signing' | 'published' | 'pending' | 'retired' | 'expired';

export interface SigningKey {
  kid: string;
  /** Public JWK, as published. */
  jwk: JWK;
  /** Private key, decrypted; absent for a retired key (and in sets read without the KEK). */
  privateKey?: KeyObject;
  /** The key-encryption key of the stored private part; absent once retired. */
  kekId?: string;
  /** Epoch seconds, database clock: when the key was published. */
  publishedAt: number;
  /** Epoch seconds: when the key may start signing. */
  signsFrom: number;
  /** Epoch seconds, retired keys only: when it was retired and when it leaves /jwks. */
  retiredAt?: number;
  unpublishAt?: number;
  /** How it came: command, import, file (an earlier version's KEYS_DIR), rotation, first-start. */
  origin: string;
  /** The signer it was generated to succeed, by automatic rotation. */
  replaces?: string;
  /** Insertion order: of keys published in one instant, the later one is newer. */
  order: number;
}

export interface KeySet {
  /** The key that signs now. */
  signer: SigningKey | undefined;
  /** Every key in /jwks, signer first. */
  published: SigningKey[];
  /** Every key in the table, oldest first. */
  all: SigningKey[];
  /** Changes when what is signed or published changes. */
  fingerprint: string;
  /** The database's clock when the set was read, epoch seconds. */
  now: number;
  /** Keys whose private part could not be decrypted, and why. */
  problems: string[];
}

/** An operator's request the schedule refuses (the CLI prints it as one line). */
export class KeyRefusal extends Error {}

interface Row {
  id: string | number;
  kid: string;
  public_jwk: JWK | string;
  kek_id: string | null;
  private_key_encrypted: string | null;
  origin: string;
  replaces: string | null;
  published_at: number;
  signs_from: number;
  retired_at: number | null;
  unpublish_at: number | null;
}

const COLUMNS = `id, kid, public_jwk, kek_id, private_key_encrypted, origin, replaces,
  extract(epoch FROM published_at)::float8 AS published_at,
  extract(epoch FROM signs_from)::float8 AS signs_from,
  extract(epoch FROM retired_at)::float8 AS retired_at,
  extract(epoch FROM unpublish_at)::float8 AS unpublish_at`;

async function rows(db: Database): Promise<Row[]> {
  const result = await db.raw(`SELECT ${COLUMNS} FROM signing_keys ORDER BY published_at, id`);
  return (result as { rows: Row[] }).rows;
}

async function clock(db: Database, sql = 'now()'): Promise<number> {
  const result = await db.raw(`SELECT extract(epoch FROM ${sql})::float8 AS now`);
  return Number((result as { rows: { now: number }[] }).rows[0]!.now);
}

function toKey(row: Row, encryption: KeyEncryption | undefined, problems: string[]): SigningKey {
  const key: SigningKey = {
    kid: row.kid,
    jwk: typeof row.public_jwk === 'string' ? JSON.parse(row.public_jwk) as JWK : row.public_jwk,
    publishedAt: Number(row.published_at),
    signsFrom: Number(row.signs_from),
    origin: row.origin,
    order: Number(row.id),
    ...(row.kek_id ? { kekId: row.kek_id } : {}),
    ...(row.replaces ? { replaces: row.replaces } : {}),
    ...(row.retired_at !== null ? { retiredAt: Number(row.retired_at), unpublishAt: Number(row.unpublish_at) } : {}),
  };
  if (encryption && row.kek_id && row.private_key_encrypted) {
    try {
      const der = encryption.decrypt(row.kid, row.kek_id, row.private_key_encrypted);
      key.privateKey = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return key;
}

/**
 * A key as a server with `times` applies it. The stored times come from whoever added or
 * retired the key (the `keys` command with its own settings, maybe the defaults); a server
 * whose /jwks is cached longer, or whose tokens live longer, never signs sooner or
 * unpublishes sooner than its own settings allow. A key stored to sign at once (the first
 * of an empty database, a former signer imported from files) still does.
 */
function withOwnDelays(key: SigningKey, times: ScheduleTimes): SigningKey {
  const signsFrom = key.signsFrom <= key.publishedAt ? key.signsFrom : Math.max(key.signsFrom, key.publishedAt + signingDelay(times));
  if (key.retiredAt === undefined) return { ...key, signsFrom };
  return { ...key, signsFrom, unpublishAt: Math.max(key.unpublishAt!, key.retiredAt + unpublishDelay(times)) };
}

/**
 * Which key signs and which are published at `now`: the rules of the schedule, nothing else.
 * With `times` (a server's), as that server applies them; without, the stored times.
 */
export function scheduleOf(stored: SigningKey[], now: number, problems: string[] = [], times?: ScheduleTimes): KeySet {
  const all = times ? stored.map((k) => withOwnDelays(k, times)) : stored;
  const sorted = [...all].sort((a, b) => a.publishedAt - b.publishedAt || a.order - b.order);
  const active = sorted.filter((k) => k.retiredAt === undefined);
  const ready = active.filter((k) => k.signsFrom <= now);
  // The newest ready key signs; with none ready yet, the oldest active one.
  const signer = ready.at(-1) ?? active[0];
  const published = sorted.filter((k) => k.retiredAt === undefined || now < k.unpublishAt!);
  published.sort((a, b) => (a === signer ? -1 : b === signer ? 1 : 0));
  const fingerprint = [signer?.kid ?? '-', ...published.map((k) => k.kid)].join(',');
  return { signer, published, all: sorted, fingerprint, now, problems };
}

export function stateOf(key: SigningKey, set: KeySet, at = set.now): KeyState {
  if (key.retiredAt !== undefined) return at < key.unpublishAt! ? 'retired' : 'expired';
  if (set.signer?.kid === key.kid) return 'signing';
  return at >= key.signsFrom ? 'published' : 'pending';
}

/**
 * The keys as of the database's clock now. With `encryption`, active keys' private parts
 * are decrypted (a failure is listed in `problems`); without, only the schedule is read.
 * With `times`, scheduled as a server with those settings serves them; without, as stored.
 */
export async function loadKeys(db: Database, encryption?: KeyEncryption, times?: ScheduleTimes): Promise<KeySet> {
  const now = await clock(db);
  const problems: string[] = [];
  return scheduleOf((await rows(db)).map((row) => toKey(row, encryption, problems)), now, problems, times);
}

/** At start, a key that does not decrypt is a wrong or missing KEYS_ENCRYPTION_KEY: never run without it. */
export function requireDecryptable(set: KeySet): void {
  if (set.problems.length) throw new SettingError(`setting KEYS_ENCRYPTION_KEY="<redacted>" is invalid: ${set.problems[0]}`);
}

/** A new signing key pair, made on the thread pool (a server making one keeps answering). */
export async function generateSigningKey(): Promise<KeyObject> {
  const { privateKey } = await promisify(generateKeyPair)('rsa', { modulusLength: 2048 });
  return privateKey;
}

export function checkSigningKey(key: KeyObject): void {
  if (key.type !== 'private' || key.asymmetricKeyType !== 'rsa' || (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    throw new KeyRefusal('signing keys must be RSA private keys of 2048 bits or more');
  }
}

export async function publicJwk(key: KeyObject): Promise<{ kid: string; jwk: JWK }> {
  const exported = createPublicKey(key).export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(exported, 'sha256');
  return { kid, jwk: { kty: exported.kty, n: exported.n, e: exported.e, kid, alg: 'RS256', use: 'sig' } };
}

/** Runs `work` holding the schedule lock, with the database's clock read after taking it. */
async function locked<T>(db: Database, work: (trx: Database, now: number) => Promise<T>): Promise<T> {
  return db.transaction(async (trx) => {
    await trx.raw('SELECT pg_advisory_xact_lock(?)', [SCHEDULE_LOCK]);
    return work(trx, await clock(trx, 'clock_timestamp()'));
  });
}

interface Insert {
  privateKey: KeyObject;
  origin: string;
  publishedAt: number;
  signsFrom: number;
  replaces?: string;
}

async function insert(trx: Database, encryption: KeyEncryption, key: Insert): Promise<{ kid: string; inserted: boolean }> {
  const { kid, jwk } = await publicJwk(key.privateKey);
  const { kekId, ciphertext } = encryption.encrypt(kid, key.privateKey.export({ type: 'pkcs8', format: 'der' }));
  const result = await trx.raw(
    `INSERT INTO signing_keys (kid, public_jwk, kek_id, private_key_encrypted, origin, replaces, published_at, signs_from)
     VALUES (?, ?::jsonb, ?, ?, ?, ?, to_timestamp(?), to_timestamp(?))
     ON CONFLICT (kid) DO NOTHING RETURNING kid`,
    [kid, JSON.stringify(jwk), kekId, ciphertext, key.origin, key.replaces ?? null, key.publishedAt, key.signsFrom],
  );
  return { kid, inserted: (result as { rows: unknown[] }).rows.length === 1 };
}

async function activeKids(trx: Database): Promise<number> {
  const result = await trx.raw('SELECT count(*)::int AS n FROM signing_keys WHERE retired_at IS NULL');
  return Number((result as { rows: { n: number }[] }).rows[0]!.n);
}

export interface Added {
  kid: string;
  /** False when the database has the key already. */
  added: boolean;
  signsFrom: number;
  /** The first key of an empty database signs at once. */
  signsNow: boolean;
}

/** Adds a key (generated or imported): published now, signing after the delay, or at once if it is the only key. */
export async function addKey(db: Database, encryption: KeyEncryption, times: ScheduleTimes, privateKey: KeyObject, origin: string, options: { onlyIfNone?: boolean } = {}): Promise<Added | undefined> {
  checkSigningKey(privateKey);
  return locked(db, async (trx, now) => {
    const others = await activeKids(trx);
    if (options.onlyIfNone && others > 0) return undefined;
    const signsFrom = others === 0 ? now : now + signingDelay(times);
    const { kid, inserted } = await insert(trx, encryption, { privateKey, origin, publishedAt: now, signsFrom });
    return { kid, added: inserted, signsFrom, signsNow: others === 0 };
  });
}

export interface Retired {
  kid: string;
  retiredAt: number;
  unpublishAt: number;
}

/**
 * Stops a key signing and deletes its private part. The signer is kept until a successor may
 * sign (`force` only waives the wait, never the successor).
 */
export async function retireKey(db: Database, times: ScheduleTimes, kid: string, options: { force?: boolean } = {}): Promise<Retired> {
  return locked(db, async (trx, now) => {
    const set = scheduleOf((await rows(trx)).map((row) => toKey(row, undefined, [])), now);
    const key = set.all.find((k) => k.kid === kid);
    if (!key) throw new KeyRefusal(`no signing key ${kid} in the database`);
    if (key.retiredAt !== undefined) throw new KeyRefusal(`key ${kid} is already retired`);
    const successors = set.all.filter((k) => k.kid !== kid && k.retiredAt === undefined);
    if (!successors.length) throw new KeyRefusal(`key ${kid} is the only signing key: run \`npm run keys -- generate\` first`);
    if (set.signer?.kid === kid && !options.force && !successors.some((k) => k.signsFrom <= now)) {
      const earliest = new Date(Math.min(...successors.map((k) => k.signsFrom)) * 1000).toISOString();
      throw new KeyRefusal(`key ${kid} signs, and no other key has been published for ${signingDelay(times)} s yet (earliest: ${earliest}); wait, or use --force`);
    }
    return retire(trx, times, kid, now);
  });
}

async function retire(trx: Database, times: ScheduleTimes, kid: string, now: number): Promise<Retired> {
  const unpublishAt = now + unpublishDelay(times);
  await trx.raw(
    `UPDATE signing_keys SET retired_at = to_timestamp(?), unpublish_at = to_timestamp(?), kek_id = NULL, private_key_encrypted = NULL
     WHERE kid = ? AND retired_at IS NULL`,
    [now, unpublishAt, kid],
  );
  return { kid, retiredAt: now, unpublishAt };
}

/** Re-encrypts every stored private key, and every shared secret, under the first key-encryption key. */
export async function reencryptKeys(db: Database, encryption: KeyEncryption): Promise<{ reencrypted: string[]; kept: string[]; secrets: string[] }> {
  return locked(db, async (trx) => {
    const result = { reencrypted: [] as string[], kept: [] as string[], secrets: await reencryptSharedSecrets(trx, encryption) };
    for (const row of await rows(trx)) {
      if (!row.kek_id || !row.private_key_encrypted) continue;
      if (row.kek_id === encryption.current.id) {
        result.kept.push(row.kid);
        continue;
      }
      const { kekId, ciphertext } = encryption.encrypt(row.kid, encryption.decrypt(row.kid, row.kek_id, row.private_key_encrypted));
      await trx.raw('UPDATE signing_keys SET kek_id = ?, private_key_encrypted = ? WHERE kid = ?', [kekId, ciphertext, row.kid]);
      result.reencrypted.push(row.kid);
    }
    return result;
  });
}

export interface LegacyKeys {
  /** Active keys, in the order they appeared; `signs` marks the one that signed. */
  active: { privateKey: KeyObject; signs: boolean }[];
  retired: { kid: string; jwk: JWK; publishedAt: number; retiredAt: number }[];
}

/**
 * Imports an earlier version's key files, once: a kid the database has (even retired long
 * ago) is never added again. Into a database without keys, the former signer stays the
 * signer: it and the keys before it may sign at once, the keys after it wait their delay.
 */
export async function importLegacyKeys(db: Database, encryption: KeyEncryption, times: ScheduleTimes, legacy: LegacyKeys): Promise<string[]> {
  return locked(db, async (trx, now) => {
    const known = new Set((await rows(trx)).map((r) => r.kid));
    const empty = (await activeKids(trx)) === 0;
    const imported: string[] = [];
    const signerAt = legacy.active.findIndex((k) => k.signs);
    for (const [i, { privateKey }] of legacy.active.entries()) {
      const { kid } = await publicJwk(privateKey);
      if (known.has(kid)) continue;
      const signsFrom = empty && i <= signerAt ? now : now + signingDelay(times);
      if ((await insert(trx, encryption, { privateKey, origin: 'file', publishedAt: now, signsFrom })).inserted) imported.push(kid);
    }
    for (const key of legacy.retired) {
      if (known.has(key.kid)) continue;
      await trx.raw(
        `INSERT INTO signing_keys (kid, public_jwk, origin, published_at, signs_from, retired_at, unpublish_at)
         VALUES (?, ?::jsonb, 'file', to_timestamp(?), to_timestamp(?), to_timestamp(?), to_timestamp(?)) ON CONFLICT (kid) DO NOTHING`,
        [key.kid, JSON.stringify(key.jwk), key.publishedAt, key.publishedAt, key.retiredAt, key.retiredAt + unpublishDelay(times)],
      );
      imported.push(key.kid);
    }
    return imported;
  });
}

export interface RotationDue {
  /** Generate a successor to the signer. */
  generate: boolean;
  /** Retire these keys: a newer key signs. */
  retire: string[];
}

/**
 * Automatic rotation: a successor when the signer is `rotationSeconds` old and none is on
 * its way; once a key signs by its own schedule, every active key older than it is retired,
 * however it came (rotation, command, import, first start, files), so none stays forever.
 */
export function rotationDue(set: KeySet, rotationSeconds: number): RotationDue {
  const signer = set.signer;
  if (!rotationSeconds || !signer) return { generate: false, retire: [] };
  const isNewer = (k: SigningKey) => k.publishedAt > signer.publishedAt || (k.publishedAt === signer.publishedAt && k.order > signer.order);
  const active = set.all.filter((k) => k.retiredAt === undefined && k !== signer);
  // A signer only for want of a ready key (with none ready, the oldest signs) retires nothing.
  const ready = signer.signsFrom <= set.now;
  return {
    generate: set.now - signer.publishedAt >= rotationSeconds && !active.some(isNewer),
    retire: ready ? active.filter((k) => !isNewer(k)).map((k) => k.kid) : [],
  };
}

/** Does what `rotationDue` asks, if it is still due under the lock: however many servers ask, once. */
export async function rotate(db: Database, encryption: KeyEncryption, times: ScheduleTimes, rotationSeconds: number, seen: KeySet): Promise<{ generated?: string; retired: string[]; replaces?: string }> {
  const due = rotationDue(seen, rotationSeconds);
  if (!due.generate && !due.retire.length) return { retired: [] };
  // Made before taking the lock, so that the lock is held for milliseconds; a loser's key is dropped.
  const privateKey = due.generate ? await generateSigningKey() : undefined;
  return locked(db, async (trx, now) => {
    const set = scheduleOf((await rows(trx)).map((row) => toKey(row, undefined, [])), now, [], times);
    const still = rotationDue(set, rotationSeconds);
    const done: { generated?: string; retired: string[]; replaces?: string } = { retired: [] };
    for (const kid of still.retire) done.retired.push((await retire(trx, times, kid, now)).kid);
    if (still.generate && privateKey && set.signer) {
      const { kid } = await insert(trx, encryption, { privateKey, origin: 'rotation', publishedAt: now, signsFrom: now + signingDelay(times), replaces: set.signer.kid });
      done.generated = kid;
      done.replaces = set.signer.kid;
    }
    return done;
  });
}
