// The engine signs access tokens through this: a node:crypto KeyObject, imported once per
// key and used synchronously. The engine's default path signs through WebCrypto, which
// hands every signature to the thread pool and back; on a busy core that hop costs more
// than the signature saves. oidc-provider's ExternalSigningKey is the supported way in.
import { createPublicKey, sign, type KeyObject } from 'node:crypto';

import { ExternalSigningKey } from 'oidc-provider';

import type { SigningKey } from '../keys/signing-keys.ts';

export class RsaSigningKey extends ExternalSigningKey {
  readonly #kid: string;
  readonly #privateKey: KeyObject;
  readonly #publicKey: KeyObject;

  constructor(key: SigningKey) {
    super();
    if (!key.privateKey) throw new Error(`key ${key.kid} has no private part`);
    this.#kid = key.kid;
    this.#privateKey = key.privateKey;
    this.#publicKey = createPublicKey(key.privateKey);
  }

  override get kid(): string {
    return this.#kid;
  }

  override get alg(): string {
    return 'RS256';
  }

  override keyObject(): KeyObject {
    return this.#publicKey;
  }

  override async sign(data: Buffer): Promise<Buffer> {
    return sign('sha256', data, this.#privateKey);
  }
}
