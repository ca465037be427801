#!/usr/bin/env bash
# Throwaway certificates for the HTTPS tests (AWSCoreTests/TLSTransportTests, the KMS and S3 CLI
# TLS tests), made with the openssl CLI into DIR. Nothing here is trusted anywhere else: the
# tests pass ca.pem as AWS_CA_BUNDLE (or TLSTrust.bundle), and DIR is the test's temp directory.
#
#   scripts/tls/testpki.sh DIR
#
#   ca.pem, ca.key                the test CA (P-256, 2 days)
#   localhost.pem/.key            for localhost, 127.0.0.1, ::1 and proxied-host (signed by the test CA);
#                                 proxied-host resolves nowhere: the proxy tests reach it through
#                                 connectproxy.py --map (loopback destinations are never proxied)
#   other.pem/.key                for other.example only (signed by the test CA)
#   expired.pem/.key              for localhost and 127.0.0.1, expired yesterday (test CA)
#   untrusted-ca.pem              another CA, which no test trusts
#   untrusted.pem/.key            for localhost and 127.0.0.1, signed by that other CA
set -euo pipefail
DIR="${1:?usage: testpki.sh DIR}"
mkdir -p "$DIR"
cd "$DIR"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
  ec "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
leaf() { # name ca days san
  ec "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$4" > "$1.ext"
  # -days -1: notAfter a day before now (an expired certificate).
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days "$3" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "hsmbackup test CA"
ca untrusted-ca "hsmbackup untrusted test CA"
leaf localhost ca 1 "DNS:localhost,DNS:proxied-host,IP:127.0.0.1,IP:::1"
leaf other ca 1 "DNS:other.example"
leaf expired ca -1 "DNS:localhost,IP:127.0.0.1"
leaf untrusted untrusted-ca 1 "DNS:localhost,IP:127.0.0.1"
echo "$DIR"
