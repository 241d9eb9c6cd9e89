// What the signing-key tests share: the keys command's rows, /jwks as a resource API reads
// it, and the command's one-line refusals.
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';

import { calculateJwkThumbprint, type JWK } from 'jose';

import type { RunningServer, Workspace } from './server.ts';

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

export const epoch = (iso: string) => Date.parse(iso) / 1000;
export const newKek = () => randomBytes(32).toString('base64url');

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
