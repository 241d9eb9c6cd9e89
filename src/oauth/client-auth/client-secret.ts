// client_secret_basic and client_secret_post: the secret is compared with the client's
// stored digests (../../clients/secrets.ts), never with a value the engine holds.
import { randomBytes } from 'node:crypto';

import type { EngineClient } from '../client-metadata.ts';
import { secretMatches } from '../../clients/secrets.ts';
import type { ClientAuthMethod } from './method.ts';

// A client_secret the engine requires for secret-based methods. It is never compared
// (compareClientSecret below checks digests), and it is random so that even a mistake
// there could not be exploited.
const SECRET_PLACEHOLDER = `unused-${randomBytes(32).toString('base64url')}`;

export const clientSecret: ClientAuthMethod = {
  registered: ['client_secret_basic'],
  engineMethods: ['client_secret_basic', 'client_secret_post'],
  advertised: true,
  metadata: (record) => ({ token_endpoint_auth_method: record.authMethod, client_secret: SECRET_PLACEHOLDER }),
  hooks: () => ({
    install(provider) {
      provider.Client.prototype.compareClientSecret = function compareClientSecret(this: EngineClient, actual: string) {
        return secretMatches(actual, this.m2m_secrets, Math.floor(Date.now() / 1000));
      };
    },
  }),
};
