# Shell functions shared by scripts/*.sh. Source it; do not run it.
#
# The sourcing script sets `root` (the checkout) and may define its own `say`/`die`
# (they keep theirs; the defaults here prefix messages with $log_tag). Nothing here
# changes the machine's apt state: apt_fetch works through a private configuration.

# shellcheck shell=bash

: "${log_tag:=meshd}"
declare -F say >/dev/null || say() { echo "$log_tag: $*"; }
declare -F die >/dev/null || die() { echo "$log_tag: $*" >&2; exit 1; }

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

# apt_fetch SUITE PKG... : download the packages from the machine's own Debian mirror
# into .deps/apt/SUITE/debs through a private apt configuration (no system state is
# touched); prints the directory.
apt_fetch() {
    : "${root:?set root to the checkout before sourcing scripts/lib.sh}"
    local suite=$1 mirror work opts
    shift
    mirror=$(debian_mirror) || { say "no Debian mirror found in /etc/apt/sources*"; return 1; }
    work=$root/.deps/apt/$suite
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc" "$work/debs"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || { say "no $keyring; cannot verify the $suite suite"; return 1; }
    echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/etc/sources.list"
    opts=(-o "Dir::Etc::sourcelist=$work/etc/sources.list" -o Dir::Etc::sourceparts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
          -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" -qq update >/dev/null || return 1
    (cd "$work/debs" && apt-get "${opts[@]}" -qq download "$@" >/dev/null) || return 1
    echo "$work/debs"
}

# The docker client to use: $MESHD_DOCKER_CLIENT, else the one that came with the engine
# (Debian's docker.io: /usr/bin/docker next to /usr/sbin/dockerd; a newer CLI earlier
# in PATH works too, but builds with a deprecation notice), else `docker` in PATH.
docker_client() {
    local d c
    if [ -n "${MESHD_DOCKER_CLIENT:-}" ]; then echo "$MESHD_DOCKER_CLIENT"; return; fi
    d=$(command -v dockerd 2>/dev/null || true)
    if [ -n "$d" ]; then
        for c in "$(dirname "$d")/docker" /usr/bin/docker; do
            if [ -x "$c" ]; then echo "$c"; return; fi
        done
    fi
    command -v docker 2>/dev/null || die "no docker client: run 'make docker'"
}

# unmount_under DIR: unmount whatever is still mounted under DIR (or DIR itself),
# deepest first, so that `rm -rf DIR` stays inside it and nothing is left mounted on the
# host (debootstrap mounts proc and sys while it configures packages; dockerd bind-mounts
# its data-root onto itself). Fails if something stays mounted.
unmount_under() {
    local dir mnt
    dir=$(realpath -m "$1")
    awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    done
    if awk -v d="$dir/" 'index($2 "/", d) == 1 { found=1 } END { exit !found }' /proc/mounts; then
        say "$dir still has mounts under it: $(awk -v d="$dir/" 'index($2 "/", d) == 1 { printf "%s ", $2 }' /proc/mounts)"
        return 1
    fi
}

# The codename of this machine's Debian release (bookworm on CI).
own_suite() { (. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}"); }

# elapsed SECONDS_SINCE_EPOCH : "1m 23s" since then.
elapsed() {
    local s=$(( $(date +%s) - $1 ))
    if [ "$s" -ge 60 ]; then echo "$((s / 60))m $((s % 60))s"; else echo "${s}s"; fi
}
