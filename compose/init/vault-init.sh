#!/bin/sh
# vault-init (compose/docker-compose.yml): set up OpenBao's PKI for meshd, as an operator
# would, and give meshd a token that can use that mount only. Idempotent: each step is
# skipped when its result exists, so `docker compose up` may run it any number of times.
#
#   1. the PKI secrets engine at $MOUNT (pki), leases up to 10 years
#   2. a root issuer (EC P-256, 10 years), when the mount has none
#   3. meshd's two roles: meshd-workload (the sidecars' SPIFFE certificates: a URI SAN
#      under spiffe://<trust domain>/ and nothing else) and meshd-server (meshd's own
#      HTTPS certificate, which also names hosts and addresses)
#   4. the policy "meshd": everything on the mount (signing, and root rotation with
#      meshctl ca rotate), reading the mount's settings; nothing else
#   5. a token with that policy, written for meshd to /run/meshd-vault/token (owned by
#      meshd's uid, mode 0400), kept while OpenBao still accepts it
#
# Runs in the OpenBao image (the `bao` CLI) as root (to hand the file to meshd's uid);
# BAO_ADDR and BAO_TOKEN (a token that may do all of the above) come from the compose
# file. Works with OpenBao's and Vault's CLIs (BAO_* or VAULT_* variables, bao or vault).
set -eu

say() { echo "vault-init: $*"; }
die() { echo "vault-init: $*" >&2; exit 1; }

MOUNT=${MESHD_VAULT_MOUNT:-pki}
TRUST_DOMAIN=${MESHD_TRUST_DOMAIN:-cluster.local}
MESHD_UID=${MESHD_UID:-10001}
OUT=/run/meshd-vault/token

if command -v bao >/dev/null 2>&1; then
    cli=bao
elif command -v vault >/dev/null 2>&1; then
    cli=vault
    : "${VAULT_ADDR:=${BAO_ADDR:-}}" "${VAULT_TOKEN:=${BAO_TOKEN:-}}"
    export VAULT_ADDR VAULT_TOKEN
else
    die "neither bao nor vault is in this image; run vault-init with OpenBao's or Vault's image"
fi

tries=0
until "$cli" status >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || die "OpenBao at ${BAO_ADDR:-$VAULT_ADDR} is not ready after 60 s; see 'docker compose logs openbao'"
    sleep 1
done
"$cli" token lookup >/dev/null 2>&1 \
    || die "OpenBao refuses BAO_TOKEN; it must be the dev server's root token (OPENBAO_DEV_ROOT_TOKEN) or one that may manage mounts and policies"

# 1. the mount
if "$cli" secrets list -format=json | grep -q "\"$MOUNT/\""; then
    say "the PKI mount $MOUNT/ exists"
else
    "$cli" secrets enable -path="$MOUNT" -max-lease-ttl=87600h \
        -description="meshd workload certificates ($TRUST_DOMAIN)" pki >/dev/null
    say "enabled the PKI secrets engine at $MOUNT/"
fi

# 2. a root issuer
if "$cli" list -format=json "$MOUNT/issuers" 2>/dev/null | grep -q '"'; then
    say "$MOUNT/ has an issuer"
else
    # (its output is shown only on failure: OpenBao warns that the mount has no AIA URLs)
    if ! said=$("$cli" write -field=issuer_id "$MOUNT/root/generate/internal" \
            common_name="meshd demo root $TRUST_DOMAIN" organization=meshd issuer_name=meshd-root \
            key_type=ec key_bits=256 ttl=87600h max_path_length=1 2>&1); then
        echo "$said" >&2
        die "could not generate a root issuer on $MOUNT/ (above)"
    fi
    "$cli" patch "$MOUNT/issuer/default" leaf_not_after_behavior=truncate >/dev/null 2>&1 || true
    say "generated a root issuer (EC P-256) on $MOUNT/"
fi

# 3. the roles (written every time: writing a role is idempotent)
role() {
    name=$1
    shift
    "$cli" write "$MOUNT/roles/$name" \
        allowed_uri_sans="spiffe://$TRUST_DOMAIN/*" allowed_uri_sans_template=false \
        allow_bare_domains=false allow_subdomains=false allow_glob_domains=false \
        allow_wildcard_certificates=false enforce_hostnames=true require_cn=false \
        use_csr_common_name=false use_csr_sans=false server_flag=true client_flag=true \
        code_signing_flag=false email_protection_flag=false key_type=any key_bits=0 \
        key_usage=DigitalSignature basic_constraints_valid_for_non_ca=true \
        not_before_duration=60s ttl=24h max_ttl=168h no_store=true generate_lease=false \
        issuer_ref=default "$@" >/dev/null
}
role meshd-workload allow_any_name=false allow_localhost=false allow_ip_sans=false
role meshd-server allow_any_name=true allow_localhost=true allow_ip_sans=true
say "roles meshd-workload and meshd-server on $MOUNT/ (URI SANs spiffe://$TRUST_DOMAIN/*)"

# 4. the policy
"$cli" policy write meshd - >/dev/null <<POLICY
# meshd: sign with, inspect and rotate the roots of the $MOUNT/ mount; nothing else.
path "$MOUNT/*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}
path "sys/mounts/$MOUNT" {
  capabilities = ["read"]
}
POLICY
say "policy meshd: $MOUNT/* and reading sys/mounts/$MOUNT"

# 5. meshd's token
if [ -s "$OUT" ] && BAO_TOKEN=$(cat "$OUT") VAULT_TOKEN=$(cat "$OUT") "$cli" token lookup >/dev/null 2>&1; then
    say "meshd's token in $OUT is still valid"
else
    umask 077
    "$cli" token create -policy=meshd -orphan -ttl=720h -display-name=meshd -field=token > "$OUT.new"
    mv "$OUT.new" "$OUT"
    say "created meshd's token (policy meshd, 30 days) in $OUT"
fi
chown "$MESHD_UID:$MESHD_UID" "$OUT" "$(dirname "$OUT")"
chmod 0400 "$OUT"
chmod 0700 "$(dirname "$OUT")"
say "done"
