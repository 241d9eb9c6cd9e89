// No token leaves without its audit line. When nobody reads stdout, the log's buffer fills
// up to LOG_BUFFER_KB and stays there (memory does not grow); a token whose line would not
// fit is withheld with 503, and tokens flow again once the reader catches up.
import { addClient, createWorkspace, decodeJwtPart, eventually, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  workspace = await createWorkspace();
  secret = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', 'https://api.example.com'])).client_secret!;
  server = await startServer(workspace, { LOG_BUFFER_KB: '64' });
}, 60_000);

afterAll(async () => {
  server.process.stdout!.resume();
  await server?.stop();
  await workspace?.remove();
});

const token = () => server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });

test('with stdout unread, a full log buffer withholds tokens (503), and every token that left has its line', async () => {
  // The pipe, Node's read buffer and the 64 KB log buffer fill after some hundreds of lines.
  server.process.stdout!.pause();
  const issued: string[] = [];
  let refused: Awaited<ReturnType<typeof token>> | undefined;
  for (let sent = 0; sent < 6000 && !refused; sent += 8) {
    for (const answer of await Promise.all(Array.from({ length: 8 }, token))) {
      if (answer.status === 200) issued.push(decodeJwtPart(answer.body.access_token as string, 1).jti as string);
      else refused ??= answer;
    }
  }
  expect(issued.length).toBeGreaterThan(100);
  expect(refused?.status).toBe(503);
  expect(refused?.headers.get('retry-after')).toBe('5');
  expect(refused?.body).toEqual({ error: 'temporarily_unavailable', error_description: expect.any(String) });

  server.process.stdout!.resume();
  await eventually(async () => (await token()).status === 200, 15_000, 'a token once stdout is read again');

  const lines = await server.logLines((line) => line.event === 'token.issued', issued.length);
  const logged = new Set(lines.map((line) => line.jti));
  expect(issued.filter((jti) => !logged.has(jti))).toEqual([]);
  const metrics = await (await server.management('/metrics')).text();
  // Summed over the workers (each has its own series).
  const dropped = [...metrics.matchAll(/^m2m_log_lines_dropped_total(?:\{[^}]*\})? (\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
  expect(dropped).toBeGreaterThan(0);
}, 120_000);

test('once nothing reads stdout any more (EPIPE), every token is withheld', async () => {
  server.process.stdout!.destroy();
  // Lines already buffered when the reader left are lost with it (at most 100 ms or 2 KB of
  // them); the first write after that fails with EPIPE, and from then on nothing leaves.
  await eventually(async () => (await token()).status === 503, 15_000, 'a 503 once stdout is closed');
  const answers = await Promise.all(Array.from({ length: 20 }, token));
  expect(answers.map((answer) => answer.status)).toEqual(Array.from({ length: 20 }, () => 503));
  expect(answers.every((answer) => answer.body.access_token === undefined)).toBe(true);
}, 60_000);
