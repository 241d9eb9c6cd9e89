// The bare engine: oidc-provider with its in-memory adapter, one static client with a
// plain secret, RS256 JWT access tokens from an RSA-2048 key, over the same HTTPS setup
// as ours. What a team gets by wiring the engine up with nothing around it.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider from 'oidc-provider';

const [port, keysDir, audience] = [Number(process.argv[2]), process.argv[3]!, process.argv[4]!];
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

const provider = new Provider(`https://localhost:${port}`, {
  clients: [{
    client_id: 'bench', client_secret: 'bench-secret-bench-secret-bench-secret',
    grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
  }],
  jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'baseline', alg: 'RS256', use: 'sig' } as never] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => false,
      getResourceServerInfo: () => ({ scope: 'read write', audience, accessTokenFormat: 'jwt', accessTokenTTL: 300, jwt: { sign: { alg: 'RS256' } } }),
    },
  },
});

createServer({
  cert: readFileSync(`${keysDir}/dev-server.crt`),
  key: readFileSync(`${keysDir}/dev-server.key`),
  keepAliveTimeout: 65_000,
}, provider.callback()).listen(port, () => process.stdout.write('listening\n'));
process.on('SIGINT', () => process.exit(0));
