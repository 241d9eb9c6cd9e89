// Client secrets: generated here only, stored only as a tagged SHA-256 digest, compared in
// constant time. A fast hash is enough: the secrets are 256-bit random, so a slow hash
// adds no protection and would cost throughput on every token request.
import { hash, randomBytes, timingSafeEqual } from 'node:crypto';

/** Lets secret scanners recognise a leaked secret. */
const SECRET_PREFIX = 'm2ms_';

export interface StoredSecret {
  digest: string;
  /** Epoch seconds; null: does not expire. */
  expiresAt: number | null;
}

export function generateSecret(): string {
  return SECRET_PREFIX + randomBytes(32).toString('base64url');
}

export function digestSecret(secret: string): string {
  return `sha256:${hash('sha256', secret, 'base64url')}`;
}

/** True when `candidate` is one of the unexpired stored secrets. Every entry is compared. */
export function secretMatches(candidate: string, stored: readonly StoredSecret[], now: number): boolean {
  const actual = Buffer.from(digestSecret(candidate));
  let matched = false;
  for (const { digest, expiresAt } of stored) {
    const expected = Buffer.from(digest);
    const equal = expected.length === actual.length && timingSafeEqual(expected, actual);
    if (equal && (expiresAt === null || now < expiresAt)) matched = true;
  }
  return matched;
}
