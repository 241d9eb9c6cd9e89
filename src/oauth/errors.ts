// The engine's answers that are ours: a database outage, and a brute-force limit reached
// while the engine looks a client up.
import { errors } from 'oidc-provider';

import { StorageUnavailable } from '../storage/errors.ts';

export class TemporarilyUnavailable extends errors.OIDCProviderError {
  constructor() {
    super(503, 'temporarily_unavailable');
    this.error_description = 'the service is temporarily unavailable, retry later';
    this.expose = true;
  }
}

export class TooManyAttempts extends errors.OIDCProviderError {
  /** `reason`: which limit refused, for the audit line (error_detail is never sent). */
  constructor(reason: string) {
    super(429, 'temporarily_unavailable');
    this.error_description = 'too many failed authentication attempts; retry later';
    this.error_detail = reason;
    this.expose = true;
  }
}

/** Runs `work`; a database outage becomes the engine's 503 temporarily_unavailable. */
export async function unlessStorageDown<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof StorageUnavailable) throw new TemporarilyUnavailable();
    throw err;
  }
}
