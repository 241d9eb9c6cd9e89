// The engine's signing key signs in batches, once per turn of the event loop: every
// signature must still go to the data it was asked for, past one batch as well.
import { generateKeyPairSync, verify } from 'node:crypto';

import { TokenSigner as RsaSigningKey } from '../src/oauth/token-signer.ts';

const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const key = new RsaSigningKey({ kid: 'k1', jwk: publicKey.export({ format: 'jwk' }), privateKey, publishedAt: 0, signsFrom: 0, origin: 'test', order: 1 });

test('40 signatures asked for in one turn (more than one batch) each verify against their own data', async () => {
  const data = Array.from({ length: 40 }, (_, i) => Buffer.from(`header.payload-${i}`));
  const signatures = await Promise.all(data.map((d) => key.sign(d)));
  signatures.forEach((signature, i) => {
    expect(verify('sha256', data[i]!, publicKey, signature)).toBe(true);
    expect(verify('sha256', data[(i + 1) % data.length]!, publicKey, signature)).toBe(false);
  });
}, 10_000); // a signature left unmade fails here, not after the suite's two minutes

test('signatures asked for while a batch is being answered are made in a later one', async () => {
  const first = key.sign(Buffer.from('a'));
  const later = first.then(() => key.sign(Buffer.from('b')));
  expect(verify('sha256', Buffer.from('b'), publicKey, await later)).toBe(true);
  expect(verify('sha256', Buffer.from('a'), publicKey, await first)).toBe(true);
}, 10_000);
