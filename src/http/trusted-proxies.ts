// TRUSTED_PROXIES, compiled once per process: the front door, the caller's address, the
// forwarded client certificate and the per-address connection limit all ask this one matcher.
import proxyAddr from 'proxy-addr';

import type { Settings } from '../settings.ts';

type Trust = ReturnType<typeof proxyAddr.compile>;

const compiled = new WeakMap<Settings, Trust>();

/** proxy-addr's matcher for TRUSTED_PROXIES (the settings are loaded once, so compiled once). */
export function trustedProxies(settings: Settings): Trust {
  let trust = compiled.get(settings);
  if (!trust) {
    trust = proxyAddr.compile(settings.trustedProxies);
    compiled.set(settings, trust);
  }
  return trust;
}

/** Whether `address` is one of TRUSTED_PROXIES. */
export function isTrustedProxy(settings: Settings, address: string | undefined): boolean {
  return address !== undefined && trustedProxies(settings)(address, 0);
}
