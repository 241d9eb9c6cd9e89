// The signing keys this process uses now, as one object swapped whole when the key set
// changes (keys/key-reloader.ts): the engine's signer, the /jwks answer, the verifier of our
// own tokens (introspection, revocation) and the kid the audit lines name.
import type { KeySet } from '../keys/signing-keys.ts';
import { tokenVerifier, type TokenVerifier } from './access-tokens.ts';
import { TokenSigner } from './token-signer.ts';

export class CurrentKeys {
  /** Given to the engine once; the key behind it follows the set. */
  readonly signer: TokenSigner;
  readonly #issuer: string;
  #set!: KeySet;
  #jwks!: string;
  #verify!: TokenVerifier;

  constructor(issuer: string, set: KeySet) {
    if (!set.signer?.privateKey) throw new Error('no signing key: run `npm run keys -- generate`');
    this.#issuer = issuer;
    this.signer = new TokenSigner(set.signer);
    this.use(set);
  }

  /** From now on, `set`'s keys sign, are published and verify. */
  use(set: KeySet): void {
    if (set.signer?.privateKey) this.signer.switchTo(set.signer);
    this.#set = set;
    // Serialised once per key set: this answer is the same for every caller.
    this.#jwks = JSON.stringify({ keys: set.published.map((k) => k.jwk) });
    this.#verify = tokenVerifier(this.#issuer, set);
  }

  /** The key set in use: its signer, and what is published. */
  get set(): KeySet {
    return this.#set;
  }

  /** The kid of the key that signs now. */
  get signingKid(): string | undefined {
    return this.#set.signer?.kid;
  }

  /** The /jwks body. */
  get jwks(): string {
    return this.#jwks;
  }

  get verify(): TokenVerifier {
    return this.#verify;
  }
}
