// The RSA-2048 ceiling on this core: how many RS256 signatures, and how many complete
// JWTs (header, claims, base64url, signature), one thread can make per second. Also how
// many signatures it can verify per second: P-256 (ES256) and RSA-2048 (RS256), what a
// DPoP proof or a client assertion costs at the least.
import { createHash, generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';

const seconds = Number(process.argv[2] ?? 3);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

function rate(work: () => void): number {
  for (let i = 0; i < 200; i += 1) work();
  const until = performance.now() + seconds * 1000;
  let count = 0;
  while (performance.now() < until) {
    for (let i = 0; i < 50; i += 1) work();
    count += 50;
  }
  return count / seconds;
}

const data = createHash('sha256').update('x').digest();
const signatures = rate(() => sign('sha256', data, privateKey));
const header = Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'at+jwt', kid: 'k' })).toString('base64url');
const jwts = rate(() => {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: 'https://localhost', sub: 'c', client_id: 'c', aud: 'https://api', scope: 'a b', jti: randomBytes(16).toString('base64url'), iat: now, exp: now + 300 };
  const input = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
});
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ecSignature = sign('sha256', data, { key: ec.privateKey, dsaEncoding: 'ieee-p1363' });
const es256 = rate(() => verify('sha256', data, { key: ec.publicKey, dsaEncoding: 'ieee-p1363' }, ecSignature));
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaSignature = sign('sha256', data, rsa.privateKey);
const rs256 = rate(() => verify('sha256', data, rsa.publicKey, rsaSignature));
process.stdout.write(`${JSON.stringify({
  signatures_per_second: Math.round(signatures),
  jwts_per_second: Math.round(jwts),
  verifications_per_second: { ES256: Math.round(es256), RS256: Math.round(rs256) },
})}\n`);
