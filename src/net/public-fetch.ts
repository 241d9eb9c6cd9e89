// Fetching JSON from a URL someone else chose (a client's jwks_uri, an issuer's keys or
// discovery document): https only, bounded in time and size, no redirect followed, and
// public addresses only unless allowed. The check is on the addresses a name resolves to,
// every one of them, so no DNS name can point the server at its loopback or an internal
// network; an address literal in the URL is checked as well.
import { lookup } from 'node:dns';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import type { LookupFunction } from 'node:net';
import { rootCertificates } from 'node:tls';

import { invalidSetting } from '../settings.ts';
import { isPublicAddress } from './public-address.ts';

export interface PublicFetchOptions {
  /** Also reach loopback, private, link-local… addresses (an operator's explicit choice). */
  allowPrivate: boolean;
  /** PEM file of CAs trusted in addition to the system's (read once, here). */
  caFile: string | undefined;
  /** Appended to a refusal of a non-public address: what the operator could change. */
  privateHint?: string;
  /** What is fetched, as the messages name it ("jwks_uri"). */
  what?: string;
  timeoutMs?: number;
  maxBytes?: number;
}

/** GETs a URL and resolves with its JSON body; rejects with a message fit for the log. */
export type JsonFetch = (url: string) => Promise<unknown>;

function readCa(file: string): string {
  let pem = '';
  try {
    pem = readFileSync(file, 'utf8');
  } catch { /* reported below */ }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw invalidSetting('JWKS_URI_CA', file, 'expected a readable PEM file of CA certificates');
  }
  return pem;
}

/** A DNS lookup that fails unless every address the name resolves to is public. */
function publicOnlyLookup(hint: string): LookupFunction {
  // Picking the public one of a mixed answer would leave the choice to whoever controls the DNS.
  return (hostname, options, callback) => {
    lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '');
      const refused = addresses.find((a) => !isPublicAddress(a.address));
      if (refused) return callback(new Error(`${hostname} resolves to ${refused.address}, not a public address${hint}`), '');
      if (options.all) return callback(null, addresses);
      return callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}

export function publicJsonFetch({ allowPrivate, caFile, privateHint, what = 'URL', timeoutMs = 3000, maxBytes = 64 * 1024 }: PublicFetchOptions): JsonFetch {
  const hint = privateHint ? ` (${privateHint})` : '';
  const ca = caFile === undefined ? undefined : readCa(caFile);
  // A new connection for every fetch. A URL is fetched at most once per cooldown, so a kept
  // connection saves little, and reusing one races the other server closing it when idle
  // (many announce no Keep-Alive timeout, and Node's agent ignores one unless it has a
  // timeout of its own): the fetch fails with "socket hang up", and the client or issuer is
  // refused until the cooldown ends.
  const agent = new Agent({
    keepAlive: false,
    ...(ca ? { ca: [...rootCertificates, ca] } : {}),
    ...(allowPrivate ? {} : { lookup: publicOnlyLookup(hint) }),
  });
  return (uri) => new Promise((resolve, reject) => {
    const url = URL.parse(uri);
    if (url?.protocol !== 'https:') return reject(new Error(`${what} is not an https:// URL`));
    // Registered before such URLs were refused, or named by a discovery document: never sent.
    if (url.username || url.password) return reject(new Error(`${what} carries user:password@, which is never sent`));
    // An address literal is connected to without a lookup, so it is checked here.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (!allowPrivate && /^[\d.]+$|:/.test(host) && !isPublicAddress(host)) {
      return reject(new Error(`${host} is not a public address${hint}`));
    }
    const deadline = AbortSignal.timeout(timeoutMs);
    // The abort's own message ("The operation was aborted") would not tell the operator why.
    const fail = (err: Error) => reject(deadline.aborted ? new Error(`${what} did not answer within ${timeoutMs} ms`) : err);
    const req = request(url, { agent, headers: { accept: 'application/json' }, signal: deadline }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return reject(new Error(`${what} answered ${res.statusCode}`));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) req.destroy(new Error(`${what} response exceeds ${maxBytes} bytes`));
        else chunks.push(chunk);
      });
      res.on('error', fail);
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          reject(new Error(`${what} response is not JSON`));
        }
      });
    });
    req.on('error', fail);
    req.end();
  });
}
