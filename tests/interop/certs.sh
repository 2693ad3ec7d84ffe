#!/usr/bin/env bash
# Makes a test PKI for shardmq's TLS listeners with the openssl CLI (OpenSSL 3):
#   ca.pem ca.key                 the CA ("shardmq test CA", P-256): [listener.tls] ca_file, and
#                                 what clients trust (mosquitto_sub --cafile, paho tls_set, ...)
#   server.pem server.key         a P-256 server certificate for localhost and 127.0.0.1 (::1),
#                                 signed by the CA: [listener.tls] cert_file, key_file
#   server-chain.pem              server.pem followed by ca.pem (a PEM chain, also accepted)
#   client.pem client.key         a client certificate, CN=$CLIENT_CN (default "certuser"),
#                                 SAN DNS:$CLIENT_SAN (default "sensor-7.example"), by the CA
#   expired.pem expired.key       a client certificate by the CA, CN=expired-user, valid only
#                                 in 2020
#   other-ca.pem other-ca.key     a second CA that the broker does not trust
#   rogue.pem rogue.key           a client certificate with CN=$CLIENT_CN by that other CA
# Usage: tests/interop/certs.sh DIR   (DIR is created; existing files are replaced)
# For a real deployment use your own CA; this one is for tests and a first try (docs/security.md).
set -euo pipefail

dir="${1:?usage: certs.sh DIR}"
client_cn="${CLIENT_CN:-certuser}"
client_san="${CLIENT_SAN:-sensor-7.example}"
command -v openssl >/dev/null || {
    echo "certs.sh: the openssl command is needed (Debian: apt-get install openssl)" >&2
    exit 1
}
mkdir -p "$dir"
cd "$dir"
work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A self-signed CA: $1 = file stem, $2 = common name.
ca() {
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "/O=shardmq tests/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out "$1.pem"
}

# A leaf: $1 = stem, $2 = CA stem, $3 = subject, $4 = extensions (one per line). Valid for 825
# days from now unless NOT_BEFORE/NOT_AFTER (YYYYMMDDHHMMSSZ) are set.
leaf() {
    local stem="$1" ca="$2" subj="$3" ext="$4"
    key "$stem.key"
    openssl req -new -key "$stem.key" -subj "$subj" -out "$work/$stem.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "$ext" \
        "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" >"$work/$stem.ext"
    if [[ -n "${NOT_BEFORE:-}" ]]; then
        # `openssl x509 -req` of OpenSSL 3.0 cannot set dates in the past: `openssl ca` can.
        mkdir -p "$work/ca-$stem/new"
        : >"$work/ca-$stem/index.txt"
        cat >"$work/ca-$stem/ca.cnf" <<EOF
[ca]
default_ca = test_ca
[test_ca]
dir = $work/ca-$stem
database = \$dir/index.txt
new_certs_dir = \$dir/new
rand_serial = yes
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
organizationName = optional
EOF
        openssl ca -batch -notext -config "$work/ca-$stem/ca.cnf" -cert "$ca.pem" -keyfile "$ca.key" \
            -startdate "$NOT_BEFORE" -enddate "$NOT_AFTER" -extfile "$work/$stem.ext" \
            -in "$work/$stem.csr" -out "$stem.pem" 2>/dev/null
    else
        openssl x509 -req -in "$work/$stem.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial \
            -CAserial "$work/$ca.srl" -days 825 -sha256 -extfile "$work/$stem.ext" \
            -out "$stem.pem" 2>/dev/null
    fi
}

ca ca "shardmq test CA"
leaf server ca "/O=shardmq tests/CN=localhost" \
    "$(printf '%s\n' "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1")"
cat server.pem ca.pem >server-chain.pem
client_ext="$(printf '%s\n' "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" \
    "subjectAltName=DNS:$client_san")"
leaf client ca "/O=shardmq tests/CN=$client_cn" "$client_ext"
NOT_BEFORE=20200101000000Z NOT_AFTER=20201231000000Z \
    leaf expired ca "/O=shardmq tests/CN=expired-user" "$client_ext"
ca other-ca "not the shardmq test CA"
leaf rogue other-ca "/O=shardmq tests/CN=$client_cn" "$client_ext"
chmod 600 ./*.key

# Each certificate verifies against its own CA (the expired one when dates are not checked).
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
openssl verify -CAfile ca.pem -no_check_time expired.pem >/dev/null
openssl verify -CAfile other-ca.pem rogue.pem >/dev/null
if openssl verify -CAfile ca.pem rogue.pem >/dev/null 2>&1; then
    echo "certs.sh: rogue.pem verifies against ca.pem" >&2
    exit 1
fi
echo "certs.sh: CA, server, client (CN=$client_cn), expired and other-CA certificates in $PWD"
