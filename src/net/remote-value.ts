// A value fetched from another server (a client's jwks_uri, a federated issuer's keys) and
// cached here. One fetch at a time, which every caller joins; at most one fetch per
// cooldown, so made-up kids cannot make us hammer the other server (a call within it
// settles as the last fetch did, so a refused caller is told the last failure); and a failed
// fetch keeps the value fetched before, whose age says how far it may still be trusted.
export class RemoteValue<T> {
  value: T | undefined;
  #fetchedAt = -Infinity;
  #attemptedAt = -Infinity;
  #failure: Error | undefined;
  #pending: Promise<void> | undefined;

  readonly #load: () => Promise<T>;
  readonly #onFailure: (err: Error) => void;
  readonly #cooldownMs: number;

  constructor(load: () => Promise<T>, onFailure: (err: Error) => void, cooldownSeconds: number) {
    this.#load = load;
    this.#onFailure = onFailure;
    this.#cooldownMs = cooldownSeconds * 1000;
  }

  /** Milliseconds since the last successful fetch (Infinity before the first). */
  get ageMs(): number {
    return Date.now() - this.#fetchedAt;
  }

  /** A fetch began within the cooldown and did not fail: the value is as new as it may get. */
  get fresh(): boolean {
    return !this.#failure && Date.now() - this.#attemptedAt < this.#cooldownMs;
  }

  /** Fetches, unless a fetch is under way (joined) or one began within the cooldown. */
  refresh(): Promise<void> {
    if (this.#pending) return this.#pending;
    if (Date.now() - this.#attemptedAt < this.#cooldownMs) {
      return this.#failure ? Promise.reject(this.#failure) : Promise.resolve();
    }
    this.#attemptedAt = Date.now();
    this.#pending = this.#load()
      .then((value) => {
        this.value = value;
        this.#fetchedAt = Date.now();
        this.#failure = undefined;
      })
      .catch((err: unknown) => {
        this.#failure = err instanceof Error ? err : new Error(String(err));
        this.#onFailure(this.#failure);
        throw this.#failure;
      })
      .finally(() => { this.#pending = undefined; });
    return this.#pending;
  }
}
