// Operator input becomes source code: `client` and `issuer` render migrations that
// `npm run migrate` and the server execute, with DATABASE_URL and KEYS_ENCRYPTION_KEY in
// their environment. Whatever a value holds, the rendered module must have exactly the
// template's code, the values only as literals.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import fc from 'fast-check';
import ts from 'typescript';

import {
  renderAddClient, renderAddIssuer, renderRotateSecret, renderSetEnabled, renderSetIssuerEnabled, type NewIssuer, type RenderedMigration,
} from '../src/clients/migrations.ts';
import type { NewClient } from '../src/clients/register.ts';
import { createWorkspace } from './helpers/server.ts';

/**
 * The module's code with every literal value replaced by `V` (an array of literals by
 * `[V]`): two renderings of a template have the same skeleton whatever values they carry,
 * unless a value escaped its literal. Comments are trivia, outside the tree: a value that
 * ended its comment shows up as statements.
 */
function skeleton(source: string): string {
  const file = ts.createSourceFile('m.ts', source, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const diagnostics = (file as unknown as { parseDiagnostics: unknown[] }).parseDiagnostics;
  if (diagnostics.length) return `unparseable: ${diagnostics.length} errors`;
  const isValue = (node: ts.Node): boolean => ts.isStringLiteral(node) || ts.isNumericLiteral(node)
    || [ts.SyntaxKind.TrueKeyword, ts.SyntaxKind.FalseKeyword, ts.SyntaxKind.NullKeyword].includes(node.kind);
  const walk = (node: ts.Node): string => {
    // Strings in the template's own code (table names…) are part of its shape.
    if (isValue(node) && !(ts.isStringLiteral(node) && node.parent && ts.isCallExpression(node.parent))) return 'V';
    if (ts.isArrayLiteralExpression(node) && node.elements.every(isValue)) return '[V]';
    if (ts.isIdentifier(node)) return node.text;
    const children = node.getChildren().map(walk).filter(Boolean);
    return children.length ? `${ts.SyntaxKind[node.kind]}(${children.join(' ')})` : ts.SyntaxKind[node.kind];
  };
  return walk(file);
}

// Strings rich in what ends literals, comments and lines, mixed with anything at all.
const nasty = fc.array(fc.oneof(
  fc.constantFrom('\n', '\r', '\u2028', '\u2029', '\u0085', '"', '\'', '`', '${', '\\', '*/', '/*', '//', '\u0000', '</script>'),
  fc.string({ unit: 'binary', maxLength: 8 }),
), { maxLength: 12 }).map((parts) => parts.join(''));
const maybe = (arb: fc.Arbitrary<string>) => fc.option(arb, { nil: undefined });

function sameShape(render: (v: string) => RenderedMigration, value: string): void {
  expect(skeleton(render(value).source)).toBe(skeleton(render('plain').source));
}

const clientOf = (s: string, other: { ttl: number | undefined; jwks: boolean }): NewClient => ({
  clientId: s,
  authMethod: 'private_key_jwt',
  audiences: [s, `${s}2`],
  scopes: [s],
  ttl: other.ttl,
  ...(other.jwks ? { jwks: { keys: [{ kty: s, kid: s }] } } : { jwksUri: s }),
  tlsSubjectDn: s,
  tlsSanDns: s,
  tlsSanUri: s,
  introspectAudiences: [s],
  // Never empty: clientRow names the federated columns only when there is an issuer.
  federatedIssuer: `i${s}`,
  federatedSubject: s,
});

test('client add: no id, audience, scope, key set, URL, DN, SAN or subject escapes its literal', () => {
  fc.assert(fc.property(nasty, maybe(fc.constant('digest')), fc.option(fc.integer({ min: 1, max: 3600 }), { nil: undefined }), fc.boolean(),
    (value, digest, ttl, jwks) => {
      // Every field carries the same value, so one shape stands for all of them.
      sameShape((v) => renderAddClient(clientOf(v, { ttl, jwks }), digest === undefined ? undefined : v), value);
    }), { numRuns: 500 });
});

test('client rotate-secret, disable and enable: the id stays a literal', () => {
  fc.assert(fc.property(nasty, fc.boolean(), (value, enabled) => {
    sameShape((v) => renderRotateSecret(v, v, 60), value);
    sameShape((v) => renderSetEnabled(v, enabled), value);
  }), { numRuns: 300 });
});

test('issuer add, disable and enable: no name, URL, audience or key set escapes its literal', () => {
  fc.assert(fc.property(nasty, fc.constantFrom<NewIssuer['kind']>('oidc', 'kubernetes', 'spiffe'), fc.boolean(), fc.boolean(), (value, kind, jwks, enabled) => {
    const issuerOf = (v: string): NewIssuer => ({
      name: v, kind, issuer: v, audience: v, maxLifetime: 3600, allowPrivate: jwks,
      ...(jwks ? { jwks: { keys: [{ kid: v, x: v }] } } : { jwksUri: v }),
    });
    sameShape((v) => renderAddIssuer(issuerOf(v)), value);
    sameShape((v) => renderSetIssuerEnabled(v, enabled), value);
  }), { numRuns: 500 });
});

test('the skeleton sees code hidden behind a line terminator in a comment', () => {
  // The check itself can fail: the attack of issue 21, written by hand.
  const template = renderSetIssuerEnabled('x', true).source;
  const injected = template.replace('// Enables', '// Enables\u2028globalThis.marker = 1;//');
  expect(skeleton(injected)).not.toBe(skeleton(template));
});

test('a line terminator in --issuer is refused by the CLI, and migrate runs no code from it', async () => {
  const workspace = await createWorkspace();
  try {
    const marker = join(workspace.dir, 'marker');
    const payload = `import('node:fs').then((fs) => fs.writeFileSync(${JSON.stringify(marker)}, 'pwned'));// rest of the line:`;
    const added = [];
    for (const [name, terminator] of [['evil-lf', '\n'], ['evil-ls', '\u2028']] as const) {
      added.push(await workspace.cli('issuer', ['add', name, '--issuer', `https://issuer.example.test/a${terminator}${payload}`]));
    }
    const migrated = await workspace.cli('migrate', ['latest']);
    expect(existsSync(marker)).toBe(false);
    expect({ code: migrated.code, stderr: migrated.stderr }).toEqual({ code: 0, stderr: '' });
    for (const result of added) {
      expect(result.code).toBe(2);
      expect(result.stderr.trim()).toMatch(/^error: --issuer .* must be printable ASCII/s);
    }
    expect(readdirSync(workspace.migrationsDir).filter((f) => f.includes('issuer_evil'))).toEqual([]);
  } finally {
    await workspace.remove();
  }
}, 180_000);
