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

export const ACCEPTED_KEYS = `RSA ${RSA_MIN_BITS}-${RSA_MAX_BITS} bits with exponent 65537, EC P-256 or P-384, or Ed25519`;
