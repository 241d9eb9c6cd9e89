// Where the engine looks a client up, before it checks any credential: the engine's
// Client.find, replaced here and nowhere else. The steps, in order:
// 1. which client: the one a credential other than client_id names (a federated client's
//    external token, not verified yet), or else the id asked for;
// 2. an id no client can have is unknown without asking the database (which refuses some
//    bytes outright, and such an error must not read as an outage);
// 3. an attempt is taken from the brute-force limit of this client id at this address (the
//    front door took one from the address's);
// 4. the registry (a database outage is a 503);
// 5. a disabled client is refused like an unknown one, but the log says what happened;
// 6. the engine's client is built once per record (the engine would serialise and hash it
//    on every request), with what its method keeps (client-auth/ `built`);
// 7. the method's own step (client-auth/ `found`): the jwks_uri keys of a private_key_jwt
//    client, the external token of a federated one (then the method that named the client
//    in step 1, whatever the client's own method).
import Provider, { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { ClientRecord, ClientRegistry } from '../clients/registry.ts';
import { CLIENT_ID_PATTERN } from '../clients/validate.ts';
import { holdAttempt, holdsClient, type BruteForce } from './brute-force.ts';
import { CLIENT_AUTH_METHODS, methodFor } from './client-auth/index.ts';
import type { ClientAuthMethod, MethodHooks } from './client-auth/method.ts';
import type { EngineClient } from './client-metadata.ts';
import { TemporarilyUnavailable, TooManyAttempts, unlessStorageDown } from './errors.ts';

interface LookupDeps {
  registry: ClientRegistry;
  bruteForce?: BruteForce | undefined;
  /** Each method's hooks into this engine. */
  hooks: Map<ClientAuthMethod, MethodHooks>;
}

type LookupContext = KoaContextWithOIDC & { state: { address?: string } };

/** Step 3: refuses (429, or 503 when the limits cannot be read) or holds an attempt for the request. */
async function admit(bruteForce: BruteForce | undefined, ctx: LookupContext | undefined, id: string): Promise<void> {
  const address = ctx?.state?.address;
  if (!bruteForce || !address || holdsClient(ctx.state, id)) return;
  const admitted = bruteForce.admitClient(address, id);
  const admission = 'then' in admitted ? await admitted : admitted;
  if ('refused' in admission) {
    ctx.set('retry-after', String(Math.max(1, Math.ceil(admission.waitMs / 1000))));
    throw new TooManyAttempts(admission.refused);
  }
  if ('busy' in admission) throw new TemporarilyUnavailable();
  holdAttempt(ctx.state, admission.attempt, id);
}

export function useClientLookup(provider: Provider, { registry, bruteForce, hooks }: LookupDeps): void {
  const identifying = CLIENT_AUTH_METHODS.filter((method) => hooks.get(method)?.identify);
  const built = new WeakMap<ClientRecord, EngineClient>();
  const engineFind = provider.Client.find.bind(provider.Client);

  /** Step 6. */
  const buildOnce = async (record: ClientRecord): Promise<EngineClient | undefined> => {
    let client = built.get(record);
    if (!client) {
      client = await engineFind(record.clientId) as EngineClient | undefined;
      if (!client) return undefined;
      hooks.get(methodFor(record.authMethod))?.built?.(client);
      built.set(record, client);
    }
    return client;
  };

  provider.Client.find = async (asked: string) => {
    const ctx = Provider.ctx as LookupContext | undefined;
    let id = asked;
    let namedBy: ClientAuthMethod | undefined;
    for (const method of identifying) {
      const named = await hooks.get(method)!.identify!(ctx);
      if (named !== undefined) {
        [id, namedBy] = [named, method];
        break;
      }
    }
    if (typeof id !== 'string' || !CLIENT_ID_PATTERN.test(id)) return undefined;
    await admit(bruteForce, ctx, id);
    const record = await unlessStorageDown(() => registry.find(id));
    if (!record) return undefined;
    if (!record.enabled) throw new errors.InvalidClientAuth('client is disabled');
    const client = await buildOnce(record);
    if (!client) return undefined;
    await hooks.get(namedBy ?? methodFor(record.authMethod))?.found?.(client, ctx);
    return client;
  };
}
