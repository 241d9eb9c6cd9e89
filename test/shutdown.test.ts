// SIGTERM while requests are in flight: every one completes, and the process exits 0
// within the 10 s the contract allows.
import { connect } from 'node:net';

import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

test('SIGTERM during 32 concurrent token requests: all complete, exit code 0', async () => {
  const burst = () => Promise.all(Array.from({ length: 32 }, () => server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] })));
  // Open the connections first, as long-lived clients have them; then the real burst.
  expect((await burst()).map((r) => r.status)).toEqual(Array(32).fill(200));
  const inFlight = burst();
  await new Promise((resolve) => setTimeout(resolve, 15));
  const started = Date.now();
  server.process.kill('SIGTERM');
  const results = await inFlight;
  expect(results.map((r) => r.status)).toEqual(Array(32).fill(200));
  const code = await server.stop();
  expect(code).toBe(0);
  expect(Date.now() - started).toBeLessThan(10_000);
  expect(server.output()).toMatch(/"msg":"stopped"/);
  // The listener is closed: the port refuses connections.
  const refused = await new Promise<string>((done) => {
    const socket = connect(server.port, '127.0.0.1', () => { socket.destroy(); done('connected'); });
    socket.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? 'error'));
  });
  expect(refused).toBe('ECONNREFUSED');
});
