// Signing keys at rest and the keys command, one process at a time: the private parts are
// never stored in clear, nor the DPoP nonce secret; a wrong key-encryption key stops the
// start; the key-encryption key rotates with `keys reencrypt`; rolling back the keys'
// migration is refused while it holds keys; `keys generate|import|list|retire` and their
// one-line refusals. (Keys across processes: keys.test.ts.)
import { execFile } from 'node:child_process';
import { createDecipheriv, generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { epoch, expectOneLineRefusal, listKeys, migrate, newKek, publishedKids, rsaKey } from './helpers/keys.ts';
import { NODE, nodeFlags } from './helpers/node.ts';
import { createWorkspace, ROOT, startServer, type Workspace } from './helpers/server.ts';

/** Every table's rows, as test/helpers/dump-db.ts prints them. */
async function dumpDatabase(workspace: Workspace, env: Record<string, string> = {}): Promise<string> {
  const dumpEnv = { ...workspace.env, ...env };
  return new Promise((done, fail) => {
    execFile(NODE, [...nodeFlags(dumpEnv), join(ROOT, 'test', 'helpers', 'dump-db.ts')], { cwd: workspace.dir, env: dumpEnv, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) fail(new Error(stderr));
      else done(stdout);
    });
  });
}

describe('key storage and the key-encryption key', () => {
  let workspace: Workspace | undefined;
  afterEach(async () => {
    await workspace?.remove();
    workspace = undefined;
  });

  test('no private key in clear in the database: not the PEM, not the DER, not a JWK part', async () => {
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: newKek() });
    await migrate(workspace);
    const known = await rsaKey();
    const file = join(workspace.dir, 'known.pem');
    writeFileSync(file, known.pem);
    const imported = await workspace.cli('keys', ['import', file, '--json']);
    expect(imported).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(imported.stdout)).toMatchObject({ kid: known.kid, state: 'signing', signs_from: 'now' });
    expect((await workspace.cli('keys', ['generate'])).code).toBe(0);

    const dump = await dumpDatabase(workspace);
    // The control: the dump has the keys' public parts.
    expect(dump).toContain(known.kid);
    expect(dump).toContain(known.jwk.n!);
    const der = known.privateKey.export({ type: 'pkcs8', format: 'der' });
    const secrets = [
      'PRIVATE KEY', der.toString('base64'), der.toString('base64url'), der.toString('hex'),
      known.pem.split('\n')[1]!, known.jwk.d!, known.jwk.p!, known.jwk.q!, known.jwk.dp!, known.jwk.dq!, known.jwk.qi!,
    ];
    for (const secret of secrets) expect(dump).not.toContain(secret);
    expect(dump).not.toMatch(/"d":/);
  });

  test('the DPoP nonce secret is stored encrypted under the key-encryption key, never in clear', async () => {
    const kek = newKek();
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: kek, DPOP_NONCE: 'true' });
    const server = await startServer(workspace);
    await server.stop();
    const dump = JSON.parse(await dumpDatabase(workspace)) as { shared_secrets: { name: string; kek_id: string; secret_encrypted: string }[] };
    const row = dump.shared_secrets.find((r) => r.name === 'dpop_nonce')!;
    expect(row).toBeDefined();
    expect(Object.keys(row)).not.toContain('secret');
    // The control: it opens with the key-encryption key (AES-256-GCM: IV, tag, ciphertext), and only bound to its name.
    const raw = Buffer.from(row.secret_encrypted, 'base64url');
    const open = (aad: string) => {
      const decipher = createDecipheriv('aes-256-gcm', Buffer.from(kek, 'base64url'), raw.subarray(0, 12));
      decipher.setAAD(Buffer.from(aad));
      decipher.setAuthTag(raw.subarray(12, 28));
      return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
    };
    const secret = open('m2m-shared-secret:dpop_nonce');
    expect(secret).toHaveLength(32);
    expect(() => open('m2m-signing-key:dpop_nonce')).toThrow();
    const text = JSON.stringify(dump);
    for (const form of [secret.toString('base64url'), secret.toString('base64'), secret.toString('hex')]) expect(text).not.toContain(form);
    // Started again, it reads the same secret: nonces keep working across restarts and instances.
    const again = await startServer(workspace);
    await again.stop();
    expect((JSON.parse(await dumpDatabase(workspace)) as typeof dump).shared_secrets).toEqual(dump.shared_secrets);
  });

  test('rolling back the migration that holds the keys is refused while it has any, unless M2M_ALLOW_KEY_LOSS=true', async () => {
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: newKek() });
    await migrate(workspace);
    expect((await workspace.cli('keys', ['generate'])).code).toBe(0);
    const refused = await workspace.cli('migrate', ['rollback']);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(refused.stderr).toMatch(/^error: refusing to roll back: signing_keys holds 1 signing key\(s\), the only copy of the private keys; .*M2M_ALLOW_KEY_LOSS=true/);
    // Nothing was rolled back, not even the migrations of the batch after it.
    expect((await workspace.cli('migrate', ['latest'])).stdout).toMatch(/already up to date/);
    expect(await listKeys(workspace)).toHaveLength(1);
    // Asked for by name: the batch rolls back, the keys with it.
    const allowed = await workspace.cli('migrate', ['rollback'], { M2M_ALLOW_KEY_LOSS: 'true' });
    expect(allowed).toMatchObject({ code: 0, stderr: '' });
    expect(allowed.stdout).toMatch(/signing_keys/);
    expectOneLineRefusal(await workspace.cli('keys', ['list']), /no signing_keys table/);
  });

  test('a wrong or missing key-encryption key stops the start with one line naming the setting', async () => {
    const right = newKek();
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: right });
    const first = await startServer(workspace);
    await first.stop();
    for (const env of [{ KEYS_ENCRYPTION_KEY: newKek() }, { KEYS_ENCRYPTION_KEY: '' }]) {
      const refused = await new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
        execFile(NODE, [...nodeFlags(workspace!.env), join(ROOT, 'src', 'main.ts')], { cwd: workspace!.dir, env: { ...workspace!.env, ...env } }, (err, stdout, stderr) => {
          done({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr });
        });
      });
      expect(refused.code).toBe(2);
      expect(refused.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(refused.stderr).toMatch(/^setting KEYS_ENCRYPTION_KEY="<redacted>" is invalid: key \S+ is encrypted under key-encryption key \S+, which is not in KEYS_ENCRYPTION_KEY/);
      expect(refused.stdout).not.toContain('"msg":"listening"');
      expect(refused.stdout + refused.stderr).not.toContain(right);
    }
    // A malformed one is refused before anything is opened, also by the keys command.
    expectOneLineRefusal(await workspace.cli('keys', ['list'], { KEYS_ENCRYPTION_KEY: 'not-a-key' }), /^error: setting KEYS_ENCRYPTION_KEY="<redacted>" is invalid: expected 32 random bytes/);
  });

  test('rotating the key-encryption key: a new one in front, reencrypt, then the old one can go', async () => {
    const [oldKek, newOne] = [newKek(), newKek()];
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: oldKek, DPOP_NONCE: 'true' });
    await migrate(workspace);
    expect((await workspace.cli('keys', ['generate'])).code).toBe(0);
    const before = await listKeys(workspace);
    // A server makes the DPoP nonce secret under the old key-encryption key: it moves too.
    await (await startServer(workspace)).stop();
    // Both in the list: the first encrypts (new keys), every one decrypts.
    const both = { KEYS_ENCRYPTION_KEY: `${newOne},${oldKek}` };
    expect((await workspace.cli('keys', ['generate'], both)).code).toBe(0);
    const mixed = await listKeys(workspace, both);
    expect(new Set(mixed.map((k) => k.kek_id)).size).toBe(2);
    // With only the new one, the old key does not decrypt: the command refuses and changes nothing.
    expectOneLineRefusal(await workspace.cli('keys', ['reencrypt'], { KEYS_ENCRYPTION_KEY: newOne }), /^error: key \S+ is encrypted under key-encryption key \S+, which is not in KEYS_ENCRYPTION_KEY.*nothing was changed/);
    const reencrypted = await workspace.cli('keys', ['reencrypt', '--json'], both);
    expect(reencrypted).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(reencrypted.stdout)).toMatchObject({ reencrypted: [before[0]!.kid], secrets: ['dpop_nonce'] });
    const after = await listKeys(workspace, { KEYS_ENCRYPTION_KEY: newOne });
    expect(new Set(after.map((k) => k.kek_id))).toEqual(new Set([mixed.find((k) => k.kid !== before[0]!.kid)!.kek_id]));
    // The server starts with the new key-encryption key alone.
    const server = await startServer(workspace, { KEYS_ENCRYPTION_KEY: newOne });
    expect(await publishedKids(server)).toHaveLength(2);
    await server.stop();
  });

  test('outside production a development key-encryption key is made in KEYS_DIR and used again', async () => {
    workspace = await createWorkspace();
    await migrate(workspace);
    expect((await workspace.cli('keys', ['generate'])).code).toBe(0);
    const keys = await listKeys(workspace);
    const server = await startServer(workspace);
    expect(await publishedKids(server)).toEqual([keys[0]!.kid]);
    await server.stop();
  });
});

describe('the keys command', () => {
  let workspace: Workspace;
  beforeAll(async () => {
    // A delay longer than any test takes: "pending" here cannot be overrun by a slow machine.
    workspace = await createWorkspace({ JWKS_MAX_AGE: '3600', KEYS_ENCRYPTION_KEY: newKek() });
    await migrate(workspace);
  });
  afterAll(async () => {
    await workspace?.remove();
  });

  test('generate, import, list and retire, with their refusals in one line', async () => {
    const first = JSON.parse((await workspace.cli('keys', ['generate', '--json'])).stdout) as { kid: string; state: string; signs_from: string };
    expect(first).toMatchObject({ state: 'signing', signs_from: 'now' });
    expectOneLineRefusal(await workspace.cli('keys', ['retire', first.kid]), /^error: key \S+ is the only signing key/);
    expectOneLineRefusal(await workspace.cli('keys', ['retire', first.kid, '--force']), /^error: key \S+ is the only signing key/);

    const known = await rsaKey();
    const file = join(workspace.dir, 'k.pem');
    writeFileSync(file, known.pem);
    const second = JSON.parse((await workspace.cli('keys', ['import', file, '--json'])).stdout) as { kid: string; state: string; signs_from: string };
    expect(second).toMatchObject({ kid: known.kid, state: 'pending' });
    expectOneLineRefusal(await workspace.cli('keys', ['import', file]), /^error: key \S+ is in the database already/);
    writeFileSync(file, 'not a key');
    expectOneLineRefusal(await workspace.cli('keys', ['import', file]), /is not a readable PEM private key/);
    writeFileSync(file, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    expectOneLineRefusal(await workspace.cli('keys', ['import', file]), /^error: signing keys must be RSA/);

    const keys = await listKeys(workspace);
    expect(keys.map((k) => [k.kid, k.state])).toEqual([[first.kid, 'signing'], [known.kid, 'pending']]);
    expect(epoch(keys[1]!.signs_from!) - epoch(keys[1]!.published_at)).toBeCloseTo(3600 + 30, 2);

    // The signer with a successor that may not sign for an hour yet.
    expectOneLineRefusal(await workspace.cli('keys', ['retire', first.kid]), /^error: key \S+ signs, and no other key has been published for 3630 s yet/);
    expectOneLineRefusal(await workspace.cli('keys', ['retire', 'no-such-kid']), /^error: no signing key no-such-kid/);
    const forced = await workspace.cli('keys', ['retire', first.kid, '--force', '--json']);
    expect(forced).toMatchObject({ code: 0, stderr: '' });
    expectOneLineRefusal(await workspace.cli('keys', ['retire', first.kid]), /^error: key \S+ is already retired/);
    const after = await listKeys(workspace);
    // Retired: no private part left; the other key signs (with none ready, the oldest active one does).
    expect(after.map((k) => [k.kid, k.state, k.kek_id === null])).toEqual([[first.kid, 'retired', true], [known.kid, 'signing', false]]);
  });

  test('a kid that starts with "-" is taken as a kid, not as an option', async () => {
    let key = await rsaKey();
    for (let i = 0; i < 1000 && !key.kid.startsWith('-'); i += 1) key = await rsaKey();
    expect(key.kid.startsWith('-')).toBe(true);
    const file = join(workspace.dir, 'dash.pem');
    writeFileSync(file, key.pem);
    expect((await workspace.cli('keys', ['import', file])).code).toBe(0);
    const retired = await workspace.cli('keys', ['retire', key.kid, '--force', '--json']);
    expect(retired.stderr).toBe('');
    expect(JSON.parse(retired.stdout)).toMatchObject({ kid: key.kid, state: 'retired' });
  });
});
