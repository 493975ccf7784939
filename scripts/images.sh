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
#   scripts/images.sh [all|base|wheelhouse|meshd] [--force]
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

what=all force=0
for arg in "$@"; do
    case $arg in
        all|base|wheelhouse|meshd) what=$arg ;;
        --force) force=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument '$arg'; use all, base, wheelhouse or meshd, and --force" ;;
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

SOURCES=(pyproject.toml README.md meshd sidecar registry)

source_digest() {
    (cd "$root" && find "${SOURCES[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
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
    # The build backend's own wheels too, so later builds need no index at all.
    pip_wheel 'setuptools>=77' wheel || die "pip could not get setuptools and wheel; check pip's index configuration (pip config list)"
    # Build meshd from a clean copy: no build/ or egg-info left in the checkout.
    src=$(mktemp -d) out=$(mktemp -d)
    tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -c "${SOURCES[@]}" | tar -C "$src" -x
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

case $what in
    base) step_base ;;
    wheelhouse) step_wheelhouse ;;
    meshd) step_meshd ;;
    all) step_base; step_wheelhouse; step_meshd ;;
esac
say "done in $(elapsed "$t_all")"
