// What the signing-key tests share: tokens and /jwks as a resource API reads them, the keys
// command's rows, and its one-line refusals.
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';

import { calculateJwkThumbprint, createRemoteJWKSet, customFetch, jwtVerify, type JWK } from 'jose';
import { fetch as undiciFetch } from 'undici';

import { decodeJwtPart, type RunningServer, type Workspace } from './server.ts';

/** The audience of the tests' client svc. */
export const API = 'https://api.example.test';
export const ON_POSTGRES = Boolean(process.env.TEST_DATABASE_URL);
/** Two server processes on one database need PostgreSQL: only one process may open the embedded one. */
export const twoInstances = ON_POSTGRES ? describe : describe.skip;

export interface KeyRow {
  kid: string;
  state: string;
  published_at: string;
  signs_from: string | null;
  retired_at: string | null;
  unpublish_at: string | null;
  kek_id: string | null;
  origin: string;
  replaces: string | null;
}

export interface Issued {
  token: string;
  kid: string;
  iat: number;
  exp: number;
}

export const epoch = (iso: string) => Date.parse(iso) / 1000;
export const newKek = () => randomBytes(32).toString('base64url');

/** A token for svc, with what the tests check of it. */
export async function token(server: RunningServer, secret: string): Promise<Issued> {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
  expect(res.status).toBe(200);
  const token = res.body.access_token as string;
  const { kid } = decodeJwtPart(token, 0) as { kid: string };
  const { iat, exp } = decodeJwtPart(token, 1) as { iat: number; exp: number };
  return { token, kid, iat, exp };
}

/** A resource API: jose's remote JWK Set on `jwksOf`'s /jwks, checking the token's own issuer. */
export async function verifyWith(jwksOf: RunningServer, issued: Issued) {
  const fetchWithCa = (url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: jwksOf.agent() }) as unknown as Promise<Response>;
  const set = createRemoteJWKSet(new URL(`${jwksOf.issuer}/jwks`), { [customFetch]: fetchWithCa });
  const { iss } = decodeJwtPart(issued.token, 1) as { iss: string };
  // As of when it was issued: what is checked is that /jwks has its key.
  return jwtVerify(issued.token, set, { issuer: iss, audience: API, typ: 'at+jwt', algorithms: ['RS256'], currentDate: new Date(issued.iat * 1000) });
}

/** /jwks, which never carries a private part. */
export async function jwks(server: RunningServer): Promise<{ kid: string; d?: string }[]> {
  const res = await server.fetch('/jwks');
  expect(res.status).toBe(200);
  const body = await res.json() as { keys: { kid: string; d?: string }[] };
  expect(body.keys.every((k) => k.d === undefined)).toBe(true);
  return body.keys;
}

export const publishedKids = async (server: RunningServer) => (await jwks(server)).map((k) => k.kid);

export async function listKeys(workspace: Workspace, env: Record<string, string> = {}): Promise<KeyRow[]> {
  const result = await workspace.cli('keys', ['list', '--json'], env);
  expect(result).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as KeyRow[];
}

export async function rsaKey(): Promise<{ kid: string; privateKey: KeyObject; pem: string; jwk: JWK }> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }) as JWK, 'sha256');
  return { kid, privateKey, pem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, jwk: privateKey.export({ format: 'jwk' }) as JWK };
}

export function expectOneLineRefusal(result: { code: number; stdout: string; stderr: string }, pattern: RegExp) {
  expect(result.code).toBe(2);
  expect(result.stdout).toBe('');
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(pattern);
}

export async function migrate(workspace: Workspace): Promise<void> {
  expect(await workspace.cli('migrate', ['latest'])).toMatchObject({ code: 0 });
}
