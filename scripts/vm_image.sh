#!/usr/bin/env bash
# What the Ansible tests need, made without a container registry or Ansible Galaxy:
#
#   image        meshd-vm:bookworm: a container image that boots like a small Debian VM:
#                debootstrap --variant=minbase of bookworm with systemd (PID 1),
#                python3 and python3-apt (Ansible's modules run on the target),
#                python3-venv (the roles put meshd in a venv), sudo, iproute2,
#                ca-certificates and procps, from the machine's own Debian mirror;
#                units that would reach the host's kernel from a container (udev,
#                sysctl, binfmt, module loading, fstrim, clock) are masked; imported
#                with `docker import`
#   collections  .deps/ansible/collections: the community.docker collection (its
#                `docker` connection plugin runs the playbook in those containers with
#                `docker exec`) and the one collection it depends on, taken from the
#                `ansible` package on PyPI (Galaxy is not reachable here) with
#                `pip download`; nothing else of that package is kept
#
#   scripts/vm_image.sh [all|image|collections] [--force]
#
# Idempotent like scripts/images.sh: the image carries a digest of its inputs (suite,
# packages, this recipe) as the label io.meshd.vm.inputs, the collections a stamp; a step
# whose result is current is skipped, --force redoes it. The image step runs the
# engine of scripts/docker.sh (starting it when needed and releasing it afterwards).
# Needs root (debootstrap) and .venv (make setup). See docs/ansible.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_tag=vm-image
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

VM_SUITE=bookworm
VM_IMAGE=${MESHD_VM_IMAGE:-meshd-vm:$VM_SUITE}
VM_PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,python3-venv,sudo,iproute2,ca-certificates,procps
# Units that must not run in a container sharing the host's kernel (tests/ansible runs
# it with CAP_SYS_ADMIN and its own cgroup namespace: see docs/ansible.md), or that
# only make sense on real hardware.
VM_MASKED_UNITS="systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
systemd-udev-trigger.service systemd-udev-settle.service systemd-sysctl.service
systemd-modules-load.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
proc-sys-fs-binfmt_misc.mount sys-kernel-config.mount sys-kernel-debug.mount
sys-kernel-tracing.mount sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount
systemd-remount-fs.service systemd-firstboot.service systemd-timesyncd.service
systemd-hwdb-update.service systemd-random-seed.service getty@tty1.service
console-getty.service serial-getty@.service getty.target fstrim.timer e2scrub_all.timer
e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer systemd-pcrphase.service
systemd-pcrphase-sysinit.service systemd-pcrphase-initrd.service"
# The `ansible` release the collections come from (its community.docker 4.x supports
# ansible-core 2.17 and later).
ANSIBLE_PACKAGE=${MESHD_ANSIBLE_PACKAGE:-ansible>=12,<13}
COLLECTIONS="community/docker community/library_inventory_filtering_v1"

work=$root/.deps/images
collections_dir=$root/.deps/ansible/collections
state=$root/.deps/docker
PY=$root/.venv/bin/python

what=all force=0
for arg in "$@"; do
    case $arg in
        all|image|collections) what=$arg ;;
        --force) force=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument '$arg'; use all, image or collections, and --force" ;;
    esac
done

mkdir -p "$work"
t_all=$(date +%s)

# --- collections ------------------------------------------------------------------------

step_collections() {
    local stamp=$collections_dir/.stamp key dl t0 c wheel
    key=$(echo "$ANSIBLE_PACKAGE $COLLECTIONS" | sha256sum | cut -c1-16)
    if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        say "collections in $collections_dir are current ($key)"
        return 0
    fi
    [ -x "$PY" ] || die "no .venv: run 'make setup' first (pip downloads the collections)"
    t0=$(date +%s)
    say "collections: $COLLECTIONS from the PyPI package '$ANSIBLE_PACKAGE' (pip download)"
    dl=$(mktemp -d)
    if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -d "$dl" "$ANSIBLE_PACKAGE"; then
        rm -rf "$dl"
        die "pip could not download '$ANSIBLE_PACKAGE'; check pip's index configuration (pip config list)"
    fi
    wheel=$(ls "$dl"/ansible-*.whl)
    rm -rf "$collections_dir.new"
    mkdir -p "$collections_dir.new"
    for c in $COLLECTIONS; do
        "$PY" - "$wheel" "ansible_collections/$c/" "$collections_dir.new" <<'EOF' || { rm -rf "$dl"; die "could not extract $c from $wheel"; }
import sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix)]
    if not any(n.endswith("/MANIFEST.json") for n in names):
        sys.exit(f"{prefix} is not in {wheel}")
    for n in names:
        z.extract(n, dest)
EOF
    done
    rm -rf "$dl" "$collections_dir"
    mv "$collections_dir.new" "$collections_dir"
    echo "$key" > "$stamp"
    for c in $COLLECTIONS; do
        say "    ${c/\//.} $("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["collection_info"]["version"])' \
            "$collections_dir/ansible_collections/$c/MANIFEST.json")"
    done
    say "collections ready in $(elapsed "$t0") ($(basename "$wheel"))"
}

# --- the image ----------------------------------------------------------------------------

dk() { "$client" "$@"; }

start_engine() {
    eval "$("$root/scripts/docker.sh" env | grep '^export DOCKER_HOST=')"
    client=$(docker_client)
    # A session of the engine, as scripts/images.sh holds one (see scripts/docker.sh).
    mkdir -p "$state"
    exec 8>"$state/users.lock"
    flock -s 8
    MESHD_DOCKER_SESSION=1 "$root/scripts/docker.sh" start
    trap 'exec 8>&-; "$root/scripts/docker.sh" release' EXIT
}

build_vm() {
    local key=$1 mirror rootfs cache t0 unit keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    command -v debootstrap >/dev/null || die "debootstrap not found: run 'make docker'"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run as root"
    [ -f "$keyring" ] || die "no $keyring (package debian-archive-keyring); cannot verify Debian $VM_SUITE"
    mirror=$(debian_mirror) || die "no Debian mirror in /etc/apt/sources*; debootstrap needs one"
    rootfs=$work/rootfs-vm-$VM_SUITE
    # Shared with scripts/images.sh (the same suite): held under its lock below.
    cache=$work/debootstrap-cache-$VM_SUITE
    mkdir -p "$cache"
    unmount_under "$rootfs" || die "unmount those and run again"
    rm -rf "$rootfs"
    say "debootstrap --variant=minbase $VM_SUITE with $VM_PACKAGES from the machine's Debian mirror"
    say "    (about a minute on first run; downloaded packages are kept in $cache)"
    t0=$(date +%s)
    if ! debootstrap --variant=minbase --include="$VM_PACKAGES" --keyring="$keyring" \
            --cache-dir="$cache" "$VM_SUITE" "$rootfs" "$mirror" > "$work/debootstrap-vm.log" 2>&1; then
        unmount_under "$rootfs" || true
        tail -n 20 "$work/debootstrap-vm.log" >&2
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log above, all of it in $work/debootstrap-vm.log); check the machine's apt sources and network, then run again"
    fi
    unmount_under "$rootfs" || die "debootstrap left mounts behind; unmount those and run again"
    say "    debootstrap done in $(elapsed "$t0") ($(grep -c '^I: Unpacking ' "$work/debootstrap-vm.log") packages)"
    # systemd in a container: mask what must not touch the host, boot to multi-user.
    for unit in $VM_MASKED_UNITS; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    ln -sf /lib/systemd/system/multi-user.target "$rootfs/etc/systemd/system/default.target"
    # A machine id per container (systemd makes a transient one from an empty file), the
    # host name and resolv.conf from Docker, no package caches.
    : > "$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
    say "    importing $(du -sh "$rootfs" | cut -f1) as $VM_IMAGE"
    tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
        | dk import \
            --change 'CMD ["/sbin/init"]' \
            --change 'ENV container=docker' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL io.meshd.vm.inputs=$key" \
            --change "LABEL io.meshd.vm.suite=$VM_SUITE" \
            --message "debootstrap --variant=minbase --include=$VM_PACKAGES $VM_SUITE, systemd as PID 1" \
            - "$VM_IMAGE" >/dev/null
    rm -rf "$rootfs"
    # A replaced image of ours, now untagged, goes (other images are left alone).
    dk image prune --force --filter label=io.meshd.vm.suite >/dev/null || true
}

step_image() {
    local key have t0
    start_engine
    key=$( { echo "$VM_SUITE $VM_PACKAGES $VM_MASKED_UNITS"; declare -f build_vm; } | sha256sum | cut -c1-16)
    have=$(dk image inspect --format '{{ index .Config.Labels "io.meshd.vm.inputs" }}' "$VM_IMAGE" 2>/dev/null || true)
    if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
        say "$VM_IMAGE is current (inputs $key)"
        return 0
    fi
    # debootstrap's package cache is scripts/images.sh's: one user at a time.
    exec 7>"$work/images.lock"
    if ! flock -n 7; then
        say "scripts/images.sh (or another vm_image.sh) is building; waiting for it"
        flock 7
    fi
    have=$(dk image inspect --format '{{ index .Config.Labels "io.meshd.vm.inputs" }}' "$VM_IMAGE" 2>/dev/null || true)
    if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
        say "$VM_IMAGE is current (inputs $key; built while we waited)"
        return 0
    fi
    if [ "$have" = "$key" ]; then
        say "$VM_IMAGE is current; making it again (--force)"
    elif [ -n "$have" ] && [ "$have" != "<no value>" ]; then
        say "$VM_IMAGE was made from other inputs ($have); making it again"
    fi
    t0=$(date +%s)
    build_vm "$key"
    exec 7>&-
    say "$VM_IMAGE ready in $(elapsed "$t0"): $(dk run --rm --entrypoint /bin/sh "$VM_IMAGE" -c \
        'python3 --version; /lib/systemd/systemd --version | head -n1' | tr '\n' ' ')"
}

case $what in
    collections) step_collections ;;
    image) step_image ;;
    all) step_collections; step_image ;;
esac
say "done in $(elapsed "$t_all")"
