// Which public keys a client may register (`--jwks`) or serve at its jwks_uri. Verifying a
// signature costs what the key makes it cost: RSA grows with the modulus and the public
// exponent (a 3072-bit key with a 3040-bit exponent took ~10 ms, against ~2 ms for
// RSA-2048), and anyone may make the server verify by naming the client. So only the usual
// keys pass: RSA 2048-4096 bits with exponent 65537, EC P-256 or P-384, and Ed25519.
import type { JWK } from 'jose';

const RSA_MIN_BITS = 2048;
const RSA_MAX_BITS = 4096;
const CURVES: Record<string, string[]> = { EC: ['P-256', 'P-384'], OKP: ['Ed25519'] };

function unsignedBytes(base64url: unknown): Buffer | undefined {
  if (typeof base64url !== 'string' || !/^[A-Za-z0-9_-]+$/.test(base64url)) return undefined;
  const bytes = Buffer.from(base64url, 'base64url');
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start += 1;
  return bytes.subarray(start);
}

function bitLength(bytes: Buffer): number {
  return bytes.length === 0 ? 0 : (bytes.length - 1) * 8 + (32 - Math.clz32(bytes[0]!));
}

/** Why this key is refused, or undefined when it is one of the accepted kinds. */
function keyRefusal(jwk: JWK): string | undefined {
  if (jwk.kty === 'RSA') {
    const n = unsignedBytes(jwk.n);
    const e = unsignedBytes(jwk.e);
    if (!n || !e) return 'an RSA key needs n and e';
    const bits = bitLength(n);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) return `RSA keys must be ${RSA_MIN_BITS}-${RSA_MAX_BITS} bits, not ${bits}`;
    if (e.toString('hex') !== '010001') return 'RSA keys must have the public exponent 65537';
    return undefined;
  }
  const curves = CURVES[jwk.kty ?? ''];
  if (!curves) return `kty ${JSON.stringify(jwk.kty)} is not accepted: use RSA, EC or OKP`;
  if (!curves.includes(jwk.crv ?? '')) return `${jwk.kty} keys must use ${curves.join(' or ')}, not ${JSON.stringify(jwk.crv)}`;
  return undefined;
}

/** Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2, §6.4.1). */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth'];

/**
 * Why this JWK cannot be a public signature key: a private member, a `use` other than
 * sig, or a kind keyRefusal refuses. Undefined when it can. Registered keys, keys served at
 * a jwks_uri and DPoP proof keys all pass through here.
 */
export function signatureKeyRefusal(jwk: JWK): string | undefined {
  const secret = PRIVATE_MEMBERS.find((member) => member in jwk);
  if (secret) return `the private member "${secret}" is present`;
  if (jwk.use !== undefined && jwk.use !== 'sig') return `its use is ${JSON.stringify(jwk.use)}, not "sig"`;
  return keyRefusal(jwk);
}

/**
 * Keys in one client's set (--jwks, or served at its jwks_uri): a rotation needs two or
 * three, one per algorithm a few more. The engine checks a signature against one key (see
 * oneKeyPerSignature in ../oauth/client-auth/private-key-jwt.ts), so the bound is on what is stored and loaded.
 */
export const MAX_CLIENT_KEYS = 10;
/**
 * Keys in one external issuer's set. Platforms publish more than a client: Microsoft Entra
 * ID's common JWKS carries 6-10 keys, Google's and GitHub Actions' 2-4 during a rotation, a
 * Kubernetes API server every key of --service-account-key-file (old and new while it
 * rotates), and a SPIFFE bundle one JWT authority per SPIRE server and rotation phase (an
 * HA pair mid-rotation: 4-6).
 */
export const MAX_ISSUER_KEYS = 20;

/** Why a key set an operator registers is refused: too many keys, or a kid twice. */
export function keySetRefusal(keys: { kid?: unknown }[], max: number): string | undefined {
  if (keys.length > max) return `it holds ${keys.length} keys, more than the ${max} allowed`;
  const kids = keys.map((k) => k.kid).filter((kid) => kid !== undefined);
  const twice = kids.find((kid, i) => kids.indexOf(kid) !== i);
  if (twice !== undefined) return `the kid ${JSON.stringify(twice)} is used by more than one key`;
  return undefined;
}

/**
 * A fetched set within the same bounds: a key repeating an earlier key's kid, and keys past
 * `max`, are dropped (the reason given to `skipped`), so a set served by someone else cannot
 * make one signature be checked against many keys.
 */
export function boundedKeySet<T extends { kid?: unknown }>(keys: T[], max: number, skipped: (kid: unknown, reason: string) => void = () => {}): T[] {
  const seen = new Set<unknown>();
  return keys.filter((key) => {
    if (key.kid !== undefined && seen.has(key.kid)) {
      skipped(key.kid, 'another key of the set has the same kid');
      return false;
    }
    if (seen.size >= max) {
      skipped(key.kid, `the set holds more than ${max} keys`);
      return false;
    }
    seen.add(key.kid ?? Symbol('no kid'));
    return true;
  });
}
