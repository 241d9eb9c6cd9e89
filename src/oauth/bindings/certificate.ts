// Certificate-bound tokens (RFC 8705 section 3): a client registered with `--bound` gets
// tokens carrying its certificate's thumbprint (cnf.x5t#S256). The certificate is the one
// ../client-certificates.ts reads, as for certificate authentication.
import { withMtls } from '../client-auth/certificate.ts';
import type { TokenBinding } from './binding.ts';

export const certificateBinding: TokenBinding = {
  name: 'certificate',
  metadata: (record) => ({ tls_client_certificate_bound_access_tokens: record.certificateBound }),
  hooks: ({ certificates }) => ({
    configure(configuration) {
      withMtls(configuration, { certificateBoundAccessTokens: true, getCertificate: (ctx) => certificates.getCertificate(ctx) });
    },
  }),
};
