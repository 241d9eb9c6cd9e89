// oidc-provider's own client-authentication middleware, reused so that our endpoints
// authenticate callers exactly as the token endpoint does.
declare module 'oidc-provider/lib/shared/client_auth.js' {
  import type { Middleware } from 'koa';

  const clientAuth: Middleware[];
  export default clientAuth;
  export function getClientAuthParams(ctx: unknown): Set<string>;
}
declare module 'oidc-provider/lib/shared/selective_body.js' {
  import type { Middleware } from 'koa';

  export const urlencoded: Middleware;
}
declare module 'oidc-provider/lib/shared/assemble_params.js' {
  import type { Next } from 'koa';

  export default function assembleParams(allowList: Set<string>, ctx: unknown, next: Next): Promise<void>;
}
declare module 'oidc-provider/lib/shared/reject_dupes.js' {
  import type { Next } from 'koa';

  export default function rejectDupes(options: { only?: Set<string>; except?: Set<string> }, ctx: unknown, next: Next): Promise<void>;
}
declare module 'oidc-provider/lib/shared/error_handler.js' {
  import type { Middleware } from 'koa';

  export default function getErrorHandler(eventName: string): Middleware;
}
declare module 'oidc-provider/lib/helpers/als.js' {
  import type { AsyncLocalStorage } from 'node:async_hooks';

  const als: AsyncLocalStorage<unknown>;
  export default als;
}
