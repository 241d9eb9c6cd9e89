// A Go machine client as its users write one: golang.org/x/oauth2/clientcredentials over
// an http.Client whose tls.Config trusts the server's CA and, for mutual TLS, holds the
// client's certificate. It prints the access token, or the error, and exits non-zero on one.
//
// Built by test/helpers/clients.ts (for test/clients.test.ts and test/nginx.test.ts) with Debian's packages:
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o <dir> ./test/clients/go
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/http"
	"os"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

func main() {
	tokenURL := flag.String("token-url", "", "the token endpoint")
	caFile := flag.String("ca", "", "PEM file of the CA that issued the server's certificate")
	clientID := flag.String("client-id", "", "client id")
	secret := flag.String("secret", "", "client secret (client_secret_basic); empty for mutual TLS")
	certFile := flag.String("cert", "", "client certificate (PEM), for tls_client_auth and self_signed_tls_client_auth")
	keyFile := flag.String("key", "", "its private key (PEM)")
	flag.Parse()

	if err := run(*tokenURL, *caFile, *clientID, *secret, *certFile, *keyFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(tokenURL, caFile, clientID, secret, certFile, keyFile string) error {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	tlsConfig := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		// As most Go clients do: a fixed certificate, which crypto/tls sends only when the
		// server's CertificateRequest names no CA or names the one that issued it.
		tlsConfig.Certificates = []tls.Certificate{pair}
	}
	httpClient := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}

	config := clientcredentials.Config{ClientID: clientID, ClientSecret: secret, TokenURL: tokenURL}
	if secret != "" {
		config.AuthStyle = oauth2.AuthStyleInHeader
	} else {
		config.AuthStyle = oauth2.AuthStyleInParams
	}
	token, err := config.Token(context.WithValue(context.Background(), oauth2.HTTPClient, httpClient))
	if err != nil {
		return err
	}
	fmt.Println(token.AccessToken)
	return nil
}
