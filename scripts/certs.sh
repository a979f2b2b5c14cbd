#!/usr/bin/env bash
# Test PKI for the device port's TLS listener (openssl only): used by the README's
# "Securing the device port" section and by the end-to-end and unit tests.
#
# Usage: scripts/certs.sh OUTDIR [DEVICE...]
# Writes into OUTDIR (overwriting): ca.pem/.key, server.pem/.key (127.0.0.1, localhost),
# <DEVICE>.pem/.key per device (CN and SAN DNS = name, email <name>@devices.example),
# other-ca.pem/.key, intruder.pem/.key (other CA), expired.pem/.key (validity in the past),
# revoked.pem/.key and crl.pem (the CA's CRL revoking it). Keys are EC P-256, PKCS#8.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [DEVICE...]" >&2
  exit 2
fi
OUT="$1"
shift

for name in "$@"; do
  # The name becomes the certificate's identity and so an MQTT topic level.
  if ! [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    echo "certs.sh: device name '$name': use letters, digits, '.', '_' and '-' only" >&2
    exit 2
  fi
  case "$name" in
    ca | server | other-ca | intruder | expired | revoked | crl)
      echo "certs.sh: device name '$name' is taken by one of the fixed files" >&2
      exit 2
      ;;
  esac
done

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Run openssl quietly; on failure show what it said.
ossl() {
  if ! openssl "$@" >"$WORK/log" 2>&1; then
    echo "certs.sh: openssl $1 failed:" >&2
    cat "$WORK/log" >&2
    exit 1
  fi
}

# One config for both CAs; CADIR picks the CA database, SAN the client's names.
# Both variables are expanded when the file is read, so they must always be set.
export CADIR="$WORK/ca" SAN="DNS:unused"
cat >"$WORK/openssl.cnf" <<'EOF'
[ca]
default_ca = ca_default

[ca_default]
dir = $ENV::CADIR
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 825
default_crl_days = 3650
policy = policy_cn
unique_subject = no
copy_extensions = none
# v2 CRL (rustls/webpki only read v2) with the issuer's key id.
crl_extensions = crl_ext

[policy_cn]
commonName = supplied

[req]
distinguished_name = req_dn
prompt = no

[req_dn]
CN = unused

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = $ENV::SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[crl_ext]
authorityKeyIdentifier = keyid
EOF
CNF="$WORK/openssl.cnf"

# Private keys are readable by their owner only.
newkey() {
  (umask 077 && ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
}

# newca NAME CN: a self-signed CA NAME.pem/NAME.key and its database under $WORK/NAME.
newca() {
  local dir="$WORK/$1"
  mkdir -p "$dir/new"
  : >"$dir/index.txt"
  # Random serials so certificates from different runs never share one.
  openssl rand -hex 16 >"$dir/serial"
  echo 01 >"$dir/crlnumber"
  newkey "$OUT/$1.key"
  ossl req -config "$CNF" -new -x509 -key "$OUT/$1.key" -subj "/CN=$2" \
    -days 3650 -sha256 -extensions v3_ca -out "$OUT/$1.pem"
}

# sign CA NAME CN EXT [openssl ca options...]: NAME.pem/NAME.key signed by CA.
sign() {
  local ca="$1" name="$2" cn="$3" ext="$4"
  shift 4
  newkey "$OUT/$name.key"
  ossl req -config "$CNF" -new -key "$OUT/$name.key" -subj "/CN=$cn" -out "$WORK/$name.csr"
  CADIR="$WORK/$ca" ossl ca -config "$CNF" -batch -notext \
    -cert "$OUT/$ca.pem" -keyfile "$OUT/$ca.key" \
    -extensions "$ext" -in "$WORK/$name.csr" -out "$OUT/$name.pem" "$@"
}

# client CA NAME [openssl ca options...]: a device certificate with CN=NAME.
client() {
  local ca="$1" name="$2"
  shift 2
  SAN="DNS:$name, email:$name@devices.example" sign "$ca" "$name" "$name" client_ext "$@"
}

newca ca "Sluice test CA"
sign ca server localhost server_ext
for name in "$@"; do
  client ca "$name"
done

newca other-ca "Sluice other CA"
client other-ca intruder

client ca expired -startdate 200101000000Z -enddate 210101000000Z

client ca revoked
CADIR="$WORK/ca" ossl ca -config "$CNF" -batch \
  -cert "$OUT/ca.pem" -keyfile "$OUT/ca.key" -revoke "$OUT/revoked.pem"
CADIR="$WORK/ca" ossl ca -config "$CNF" -batch \
  -cert "$OUT/ca.pem" -keyfile "$OUT/ca.key" -gencrl -out "$OUT/crl.pem"
