"""Reads an OpenID Provider's discovery document as a relying party does and validates it
with authlib's strict OpenID Connect Discovery 1.0 validator (Debian's python3-authlib).

  discovery.py <issuer> <ca file>

Prints "valid"; on a refusal, prints the reason to stderr and exits 1.
"""
import json
import ssl
import sys
import urllib.request

from authlib.oidc.discovery import OpenIDProviderMetadata


class ProviderMetadata(OpenIDProviderMetadata):
    def validate_response_types_supported(self):
        # authlib takes an empty list for a missing one. A server without an authorization
        # endpoint supports no response type: [] (RFC 7591 section 2) is the true answer,
        # and it must still be present and a JSON array.
        values = self.get('response_types_supported')
        if not isinstance(values, list):
            raise ValueError('"response_types_supported" MUST be JSON array')


def main():
    issuer, ca = sys.argv[1], sys.argv[2]
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(f'{issuer}/.well-known/openid-configuration', context=context, timeout=30) as response:
        metadata = ProviderMetadata(json.load(response))
    try:
        metadata.validate()
    except ValueError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    if metadata['issuer'] != issuer:
        print(f'issuer {metadata["issuer"]} is not {issuer}', file=sys.stderr)
        sys.exit(1)
    print('valid')


main()
