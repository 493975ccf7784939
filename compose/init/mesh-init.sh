#!/bin/sh
# mesh-init (compose/docker-compose.yml): once meshd is ready, apply the demo's rules (the
# first time only: rules you changed since are left alone) and give every sidecar what it
# needs to join: a fresh single-use join token, scoped to its service, and meshd's CA
# bundle, in that sidecar's own volume (mounted here at /join/<name>):
#
#   /join/<name>/join/token          the join token (mode 0400, meshd's uid)
#   /join/<name>/join/ca-bundle.pem  verifies meshd's certificate on first contact
#   /join/ca/ca-bundle.pem           the same bundle for Prometheus (meshd's /metrics)
#
# MESH_JOINS lists SERVICE=NAME pairs (api=api-v1: the api service's sidecar whose volume
# is /join/api-v1). A token is used up by the sidecar's first certificate; the sidecar
# keeps that certificate (and renews it) in its state dir, in the same volume, so a
# re-created sidecar container does not need a new one. Tokens expire after an hour.
#
# Runs in the meshd image as root (to hand the files to meshd's uid), with meshd's data
# dir mounted read-only for its admin token and CA bundle.
set -eu

say() { echo "mesh-init: $*"; }
die() { echo "mesh-init: $*" >&2; exit 1; }

DATA=${MESHD_DATA_DIR:-/var/lib/meshd}
RULES=${MESH_DEMO_RULES:-/etc/meshd/rules/demo.yaml}
MESHD_UID=${MESHD_UID:-10001}
: "${MESH_JOINS:?set MESH_JOINS to SERVICE=NAME pairs}"

[ -s "$DATA/admin.token" ] || die "no $DATA/admin.token: meshd's data volume has no admin token (meshd writes it on its first start with an empty store; if Consul kept an old store, remove the volumes: docker compose down -v)"
[ -s "$DATA/ca-bundle.pem" ] || die "no $DATA/ca-bundle.pem in meshd's data volume; see 'docker compose logs meshd'"
MESHD_TOKEN=$(cat "$DATA/admin.token")
MESHD_CA_FILE=$DATA/ca-bundle.pem
export MESHD_TOKEN MESHD_CA_FILE

# The demo's rules, unless the demo's VirtualService exists already.
if meshctl get virtualservice api >/dev/null 2>&1; then
    say "the demo's rules are in place (meshctl get vs api); not applied again"
else
    meshctl apply -f "$RULES" | sed 's/^/mesh-init: /'
fi

mkdir -p /join/ca
install -m 0644 "$DATA/ca-bundle.pem" /join/ca/ca-bundle.pem

for pair in $MESH_JOINS; do
    service=${pair%%=*}
    name=${pair#*=}
    dir=/join/$name
    [ -d "$dir" ] || die "no volume mounted at $dir (for $name's sidecar)"
    mkdir -p "$dir/join"
    umask 077
    meshctl token create --service "$service" --ttl 1h > "$dir/join/token.new" 2>/dev/null \
        || die "meshctl token create --service $service failed; see 'docker compose logs meshd'"
    mv "$dir/join/token.new" "$dir/join/token"
    install -m 0444 "$DATA/ca-bundle.pem" "$dir/join/ca-bundle.pem"
    chown "$MESHD_UID:$MESHD_UID" "$dir" "$dir/join" "$dir/join/token" "$dir/join/ca-bundle.pem"
    chmod 0750 "$dir" "$dir/join"
    chmod 0400 "$dir/join/token"
    say "$name: a join token for service $service and the CA bundle"
done
say "done"
