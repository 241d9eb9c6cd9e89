// The engine's one signing key follows the key set: after a switch the new key signs, and a
// header written just before the switch (naming the key replaced) is still signed by that key.
import { generateKeyPairSync, verify } from 'node:crypto';

import { TokenSigner } from '../src/oauth/token-signer.ts';

const pair = (kid: string) => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { publicKey, key: { kid, jwk: publicKey.export({ format: 'jwk' }), privateKey, publishedAt: 0, signsFrom: 0, origin: 'test', order: 1 } };
};
const signingInput = (kid: string) => Buffer.from(`${Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'at+jwt', kid })).toString('base64url')}.e30`);

test('after switchTo, kid is the new key\'s and each header is signed by the key it names', async () => {
  const [k1, k2] = [pair('k1'), pair('k2')];
  const signer = new TokenSigner(k1.key);
  expect(signer.kid).toBe('k1');
  signer.switchTo(k2.key);
  expect(signer.kid).toBe('k2');
  expect(signer.keyObject().export({ format: 'jwk' })).toEqual(k2.publicKey.export({ format: 'jwk' }));
  const [byK2, byK1] = await Promise.all([signer.sign(signingInput('k2')), signer.sign(signingInput('k1'))]);
  expect(verify('sha256', signingInput('k2'), k2.publicKey, byK2)).toBe(true);
  expect(verify('sha256', signingInput('k1'), k1.publicKey, byK1)).toBe(true);
}, 10_000);
