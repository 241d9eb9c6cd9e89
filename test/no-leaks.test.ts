// No secret and no token appears in the log, in the database or in any file: the tests
// produce them, then search everything the server and the CLI wrote.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { NODE, nodeFlags } from './helpers/node.ts';
import { addClient, createWorkspace, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
const needles: string[] = [];

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

function dumpDatabase(): Promise<string> {
  return new Promise((done, fail) => {
    execFile(NODE, [...nodeFlags(workspace.env), join(ROOT, 'test', 'helpers', 'dump-db.ts')], { cwd: workspace.dir, env: workspace.env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) fail(new Error(stderr));
      else done(stdout);
    });
  });
}

beforeAll(async () => {
  workspace = await createWorkspace();
  const { client_secret: secret } = await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--introspect', API]);
  const rotated = JSON.parse((await workspace.cli('client', ['rotate-secret', 'svc', '--json'])).stdout) as { client_secret: string };
  server = await startServer(workspace);
  needles.push(secret!, rotated.client_secret);

  for (const attempt of [secret!, rotated.client_secret]) {
    const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', attempt] });
    expect(res.status).toBe(200);
    needles.push(res.body.access_token);
    const introspected = await server.post('/token/introspection', { token: res.body.access_token }, { basic: ['svc', attempt] });
    expect(introspected.body).toMatchObject({ active: true });
  }
  // Refused attempts carry secrets too: a wrong one, one sent by client_secret_post, one for an unknown client.
  const wrong = `m2ms_wrong-${Date.now()}-guess`;
  needles.push(wrong);
  expect((await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', wrong] })).status).toBe(401);
  expect((await server.post('/token', { grant_type: 'client_credentials', client_id: 'svc', client_secret: wrong })).status).toBe(401);
  expect((await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['ghost', wrong] })).status).toBe(401);
  const revoked = needles[2]!;
  expect((await server.post('/token/revocation', { token: revoked }, { basic: ['svc', secret!] })).status).toBe(200);
  await server.stop();
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

test('the server log holds no secret and no token, but does record the refusals', () => {
  const log = server.output();
  for (const needle of needles) expect(log).not.toContain(needle);
  expect(log).toMatch(/"msg":"request refused"/);
  expect(log).toMatch(/"reason":"invalid secret provided"/);
});

test('the database holds no secret and no token', async () => {
  const dump = await dumpDatabase();
  expect(dump).toMatch(/sha256:/);
  for (const needle of needles) expect(dump).not.toContain(needle);
});

test('no file the server, CLI or database wrote holds a secret or a token', () => {
  const files = filesUnder(workspace.dir);
  expect(files.some((f) => f.includes(`${join(workspace.dir, 'migrations')}`))).toBe(true);
  for (const file of files) {
    const content = readFileSync(file).toString('latin1');
    for (const needle of needles) expect({ file, leaked: content.includes(needle) }).toEqual({ file, leaked: false });
  }
});

test('no file of the repository holds them either', () => {
  const tracked = filesUnder(ROOT).filter((f) => !/\/(node_modules|\.git|data|scratch|coverage)\//.test(f));
  for (const file of tracked) {
    const content = readFileSync(file).toString('latin1');
    for (const needle of needles) expect({ file, leaked: content.includes(needle) }).toEqual({ file, leaked: false });
  }
});
