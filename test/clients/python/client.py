"""Python machine clients as their users write them, with Debian's libraries.

  basic  : requests-oauthlib, BackendApplicationClient, client_secret_basic
  mtls   : requests-oauthlib, a client certificate (session.cert) for tls_client_auth
  pkjwt  : authlib, private_key_jwt with its default assertion lifetime (3600 s)

Prints the access token; on an error, prints it to stderr and exits 1. Run with
/usr/bin/python3 (Debian's python3-requests-oauthlib and python3-authlib).
"""
import argparse
import sys


def requests_oauthlib_token(args):
    from oauthlib.oauth2 import BackendApplicationClient
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session

    session = OAuth2Session(client=BackendApplicationClient(client_id=args.client_id))
    if args.mode == 'basic':
        return session.fetch_token(token_url=args.token_url, auth=HTTPBasicAuth(args.client_id, args.secret), verify=args.ca)
    # OAuth2Session is a requests.Session: the certificate goes on the session (Debian's
    # requests-oauthlib 1.3.0 predates fetch_token's own cert= argument).
    session.cert = (args.cert, args.key)
    return session.fetch_token(token_url=args.token_url, include_client_id=True, verify=args.ca)


def authlib_token(args):
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    with open(args.key, encoding='ascii') as pem:
        key = pem.read()
    session = OAuth2Session(args.client_id, key, token_endpoint_auth_method=PrivateKeyJWT(args.token_url))
    return session.fetch_token(args.token_url, grant_type='client_credentials', verify=args.ca)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('mode', choices=['basic', 'mtls', 'pkjwt'])
    parser.add_argument('--token-url', required=True)
    parser.add_argument('--ca', required=True)
    parser.add_argument('--client-id', required=True)
    parser.add_argument('--secret')
    parser.add_argument('--cert')
    parser.add_argument('--key')
    args = parser.parse_args()
    try:
        token = authlib_token(args) if args.mode == 'pkjwt' else requests_oauthlib_token(args)
    except Exception as err:  # the test reads the message
        print(f'{type(err).__name__}: {err}', file=sys.stderr)
        sys.exit(1)
    print(token['access_token'])


if __name__ == '__main__':
    main()
