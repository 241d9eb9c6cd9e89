// What a JWT signed by someone else may use here: client assertions, DPoP proofs and the
// external tokens of federated clients alike. Asymmetric algorithms only (no HS*, no none),
// and one clock tolerance either way.
export const SIGNATURE_ALGS = ['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA'];
/** Seconds a signed JWT's times may be off, either way. */
export const CLOCK_TOLERANCE = 15;
