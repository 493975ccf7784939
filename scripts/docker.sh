#!/usr/bin/env bash
# A Docker engine of this checkout's own, for the tests and for `make images`.
#
#   scripts/docker.sh install   Debian's docker.io, docker-compose (v1) and debootstrap,
#                               with apt-get, if missing; no system service is started
#                               or enabled by this script (make docker)
#   scripts/docker.sh start     start dockerd on .deps/docker (or reuse the one running)
#   scripts/docker.sh stop      stop it (refused while a session uses it; --force)
#   scripts/docker.sh status    is it running, versions, images, disk used
#   scripts/docker.sh env       `export DOCKER_HOST=...`: eval "$(scripts/docker.sh env)"
#   scripts/docker.sh restore-host   undo what dockerd changed on the host: its iptables
#                               rules and chains, the FORWARD policy and ip_forward as
#                               they were before its first start, docker0 (stop does it
#                               too, unless MESHD_DOCKER_KEEP_HOST=1)
#   scripts/docker.sh release   for sessions (tests, images.sh): stop the engine if a
#                               session started it and no session uses it any more
#
# Sessions: a program that needs the engine for a while (a pytest session, images.sh)
# holds a shared flock on .deps/docker/users.lock, then runs `start` with
# MESHD_DOCKER_SESSION=1; when done it closes the lock and runs `release`. An engine a
# session started is stopped by the last session to release it; one started by a human
# (`start` without MESHD_DOCKER_SESSION) stays up until `stop`.
#
# The engine keeps everything under .deps/docker: data-root (images and the build
# cache survive restarts and test runs), exec-root, pidfile, the socket
# (.deps/docker/run/docker.sock), its log (.deps/docker/dockerd.log) and an empty
# daemon.json (so /etc/docker/daemon.json of the machine is not read). Its default
# bridge is 198.18.0.1/24 and networks it creates come from 198.18.0.0/15, the range
# reserved for network tests (DESIGN.md). See docs/docker.md for what dockerd changes
# on the host (iptables chains, ip_forward) and what access to its socket means.
#
# MESHD_DOCKER_HOST=unix:///var/run/docker.sock (any DOCKER_HOST value) uses an engine
# you run yourself instead: start/stop then only check it answers / do nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_tag=docker
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

state=$root/.deps/docker
run=$state/run
sock=$run/docker.sock
pidfile=$run/dockerd.pid
log=$state/dockerd.log
lock=$state/state.lock            # held (exclusive) while starting or stopping
users=$state/users.lock           # held (shared) by every session using the engine
by_session=$run/started-by-session  # present when a session started the engine
BIP=198.18.0.1/24
POOL=base=198.18.0.0/15,size=24
STORAGE_DRIVER=${MESHD_DOCKER_STORAGE_DRIVER:-overlay2}
START_TIMEOUT=${MESHD_DOCKER_START_TIMEOUT:-90}
STOP_TIMEOUT=${MESHD_DOCKER_STOP_TIMEOUT:-45}

if [ -n "${MESHD_DOCKER_HOST:-}" ]; then
    docker_host=$MESHD_DOCKER_HOST
else
    docker_host=unix://$sock
fi

dk() { DOCKER_HOST=$docker_host "$(docker_client)" "$@"; }

answers() { DOCKER_HOST=$docker_host timeout 10 "$(docker_client)" version >/dev/null 2>&1; }

our_pid() {
    local pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
        && echo "$pid"
}

with_lock() {
    mkdir -p "$state"
    exec 9>"$lock"
    flock 9
    "$@"
}

# --- install ------------------------------------------------------------------------

cmd_install() {
    local want=() p policy_made=0
    command -v apt-get >/dev/null || die "apt-get not found: install docker.io, docker-compose and debootstrap with your system's package manager"
    for p in docker.io docker-compose debootstrap iptables; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
    done
    if [ ${#want[@]} -eq 0 ]; then
        say "docker.io, docker-compose and debootstrap are installed"
    else
        [ "$(id -u)" -eq 0 ] || die "installing ${want[*]} needs root: run 'sudo make docker'"
        say "installing ${want[*]} from the machine's apt sources (a minute)"
        # Keep the packages' maintainer scripts from starting docker/containerd as system
        # services: this checkout runs its own engine (scripts/docker.sh start).
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 0755 /usr/sbin/policy-rc.d
            policy_made=1
        fi
        local rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" \
            || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -q --no-install-recommends "${want[@]}"; } || rc=$?
        [ "$policy_made" = 1 ] && rm -f /usr/sbin/policy-rc.d
        [ "$rc" = 0 ] || die "apt-get install ${want[*]} failed (see above); check the machine's apt sources"
    fi
    say "engine:  $(dockerd --version)"
    say "client:  $("$(docker_client)" --version) ($(docker_client))"
    say "compose: $(docker-compose version --short 2>/dev/null || docker-compose --version) (docker-compose, v1)"
    if "$(docker_client)" compose version >/dev/null 2>&1; then
        say "compose: $("$(docker_client)" compose version) (docker compose, v2 plugin)"
    else
        say "compose: no 'docker compose' v2 plugin on this machine (Debian $(own_suite) does not package it); use docker-compose"
    fi
    say "debootstrap: $(dpkg-query -W -f='${Version}' debootstrap)"
    say "next: 'scripts/docker.sh start' (or make images; the tests start the engine themselves)"
}

# --- start --------------------------------------------------------------------------

host_record=$state/host-before-dockerd

# What dockerd changes and stop leaves (FORWARD policy, ip_forward), as it was before
# this checkout's engine first ran, so restore-host can put it back.
record_host() {
    [ -f "$host_record" ] && return 0
    [ -n "$(ip link show docker0 2>/dev/null)" ] && return 0  # a Docker engine ran here before: unknown
    {
        echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
        echo "forward_policy=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" { print $3 }')"
    } > "$host_record"
}

# What went wrong, from dockerd's log: its errors, then its last lines (grpc chatter left out).
show_log() {
    echo "docker: $1; from its log ($log):" >&2
    grep -E 'level=(error|fatal)|^failed to start' "$log" 2>/dev/null | tail -n 10 | sed 's/^/  | /' >&2 || true
    echo "docker: its last lines:" >&2
    grep -v -e 'module=grpc' -e 'level=debug' "$log" 2>/dev/null | tail -n 12 | sed 's/^/  | /' >&2 || true
}

advice() {
    cat >&2 <<EOF
docker: what to do:
  - "iptables" errors: dockerd needs iptables and the kernel's netfilter (nf_tables or
    ip_tables); install iptables (make docker), or try the legacy backend:
    update-alternatives --set iptables /usr/sbin/iptables-legacy
  - "cgroup" errors: mount the cgroup hierarchies (v1 under /sys/fs/cgroup/<controller>
    or v2 at /sys/fs/cgroup); in a container run it --privileged
  - "overlay" / storage-driver errors: put .deps on ext4 or xfs, or set
    MESHD_DOCKER_STORAGE_DRIVER=vfs (slow, large)
  - "address already in use" / docker0 errors: another Docker engine runs on this host;
    stop it, or use it with MESHD_DOCKER_HOST=unix:///var/run/docker.sock (its default
    bridge must then be 198.18.0.1/24, see docs/docker.md)
  - the whole log: $log
EOF
}

started=0
start_engine() {
    if answers; then
        say "engine already running on $docker_host"
        return 0
    fi
    if [ -n "${MESHD_DOCKER_HOST:-}" ]; then
        die "no Docker engine answers on MESHD_DOCKER_HOST=$MESHD_DOCKER_HOST; start yours, or unset MESHD_DOCKER_HOST to use this checkout's own"
    fi
    command -v dockerd >/dev/null || die "dockerd not found: run 'make docker' (installs Debian's docker.io)"
    [ "$(id -u)" -eq 0 ] || die "dockerd needs root: run this as root (CI does)"
    local pid
    if pid=$(our_pid); then
        say "dockerd (pid $pid) is running but does not answer yet; waiting"
    else
        # One engine per host: a system dockerd would fight ours over docker0 and iptables.
        local other
        other=$(pgrep -x dockerd || true)
        if [ -n "$other" ]; then
            die "another dockerd runs on this host (pid $(echo "$other" | tr '\n' ' ')): stop it, or use it with MESHD_DOCKER_HOST (see docs/docker.md)"
        fi
        # Unix sockets have a 108-byte limit; containerd's live under the exec-root.
        [ ${#run} -le 70 ] || die "the checkout's path is too long for the engine's sockets ($run); clone it somewhere shorter"
        mkdir -p "$state/data" "$run/exec"
        rm -f "$sock" "$pidfile" "$by_session"
        [ -f "$state/daemon.json" ] || echo '{}' > "$state/daemon.json"
        [ -f "$log" ] && mv -f "$log" "$log.1"
        record_host
        say "starting dockerd: data-root $state/data, socket $sock, bridge $BIP, networks from ${POOL#base=}"
        setsid dockerd \
            --config-file "$state/daemon.json" \
            --data-root "$state/data" \
            --exec-root "$run/exec" \
            --pidfile "$pidfile" \
            -H "unix://$sock" \
            --storage-driver "$STORAGE_DRIVER" \
            --bip "$BIP" \
            --default-address-pool "$POOL" \
            >"$log" 2>&1 </dev/null 8>&- 9>&- &
        pid=$!
        started=1
    fi
    local t0 i
    t0=$(date +%s)
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        if answers; then
            say "engine ready in $(elapsed "$t0") (pid $pid): export DOCKER_HOST=$docker_host"
            return 0
        fi
        if [ ! -d "/proc/$pid" ]; then
            show_log "dockerd exited while starting"
            advice
            exit 1
        fi
        sleep 0.5
    done
    show_log "dockerd (pid $pid) did not answer within ${START_TIMEOUT}s"
    kill -TERM "$pid" 2>/dev/null || true
    advice
    exit 1
}

cmd_start() {
    with_lock start_engine
    if [ "${MESHD_DOCKER_SESSION:-}" = 1 ]; then
        # The last session to release it stops an engine a session started.
        if [ "$started" = 1 ]; then : > "$by_session"; fi
    elif [ -z "${MESHD_DOCKER_HOST:-}" ]; then
        # Started or reused by a human: it stays up until scripts/docker.sh stop.
        rm -f "$by_session"
    fi
}

# --- stop ---------------------------------------------------------------------------

stop_engine() {
    local pid i
    if ! pid=$(our_pid); then
        say "engine not running"
        rm -f "$by_session"
        if [ -z "$(pgrep -x dockerd || true)" ]; then unmount_under "$state" || true; fi
        return 0
    fi
    say "stopping dockerd (pid $pid); running containers get SIGTERM, images are kept"
    kill -TERM "$pid"
    for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.5
    done
    if [ -d "/proc/$pid" ]; then
        say "dockerd did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$by_session" "$sock"
    # dockerd bind-mounts its data-root onto itself (mount propagation) and may leave it.
    unmount_under "$state" || say "warning: mounts left under $state (see above); 'umount' them by hand"
    say "stopped"
    if [ "${MESHD_DOCKER_KEEP_HOST:-}" != 1 ] && [ -z "$(pgrep -x dockerd || true)" ]; then
        cmd_restore_host
    fi
}

cmd_stop() {
    if [ -n "${MESHD_DOCKER_HOST:-}" ]; then
        say "MESHD_DOCKER_HOST is set: that engine is yours to stop"
        return 0
    fi
    mkdir -p "$state"
    if [ "${1:-}" != --force ]; then
        exec 8>"$users"
        flock -n -x 8 || die "a session (pytest, images.sh) is using the engine; stop it when that is done, or: scripts/docker.sh stop --force"
        exec 8>&-
    fi
    with_lock stop_engine
}

cmd_restore_host() {
    local table rule chain ip_forward=0 forward_policy=ACCEPT
    [ -z "${MESHD_DOCKER_HOST:-}" ] || die "MESHD_DOCKER_HOST is set: that engine's host is yours"
    our_pid >/dev/null && die "the engine is running: scripts/docker.sh stop first"
    [ -z "$(pgrep -x dockerd || true)" ] || die "a dockerd runs on this host; its iptables rules are in use"
    if [ -f "$host_record" ]; then
        # shellcheck disable=SC1090
        . "$host_record"
    else
        say "no record of the host before dockerd; restoring Linux's defaults (ip_forward=0, FORWARD ACCEPT)"
    fi
    if command -v iptables >/dev/null; then
        for table in filter nat; do
            # Delete dockerd's rules from the built-in chains, then its own chains.
            iptables -t "$table" -S | awk '$1 == "-A" && $2 !~ /^DOCKER/ && /DOCKER|docker0|br-[0-9a-f]/' \
                | while read -r rule; do
                    # shellcheck disable=SC2086
                    iptables -t "$table" -D ${rule#-A } || true
                done
            for chain in $(iptables -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ { print $2 }'); do
                iptables -t "$table" -F "$chain"
            done
            for chain in $(iptables -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ { print $2 }'); do
                iptables -t "$table" -X "$chain"
            done
        done
        iptables -P FORWARD "${forward_policy:-ACCEPT}"
    fi
    sysctl -q -w "net.ipv4.ip_forward=${ip_forward:-0}" >/dev/null
    if ip link show docker0 >/dev/null 2>&1; then ip link delete docker0; fi
    say "host restored: iptables without dockerd's rules, FORWARD ${forward_policy:-ACCEPT}, ip_forward=${ip_forward:-0}, no docker0"
}

release_engine() {
    [ -f "$by_session" ] || return 0
    exec 8>"$users"
    if flock -n -x 8; then
        say "no session uses the engine any more"
        stop_engine
    fi
    exec 8>&-
}

cmd_release() {
    [ -z "${MESHD_DOCKER_HOST:-}" ] || return 0
    with_lock release_engine
}

# --- status / env -------------------------------------------------------------------

cmd_status() {
    local pid
    if answers; then
        pid=$(our_pid || echo "?")
        say "running on $docker_host (pid $pid)"
        dk version --format '    engine {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}'
        dk network inspect bridge --format '    default bridge {{range .IPAM.Config}}{{.Subnet}} gateway {{.Gateway}}{{end}}'
        if [ -f "$by_session" ]; then
            echo "    started by a session (pytest, images.sh): stopped when the last one finishes"
        fi
        echo "    images:"
        dk images --format '      {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' | grep -v '<none>' || true
        echo "    containers running: $(dk ps -q | wc -l)"
    else
        say "not running (socket $docker_host); start it with: scripts/docker.sh start"
    fi
    if [ -d "$state/data" ]; then
        echo "    data-root $state/data: $(du -sh "$state/data" 2>/dev/null | cut -f1)"
    fi
}

cmd_env() {
    echo "export DOCKER_HOST=$docker_host"
    echo "# the engine's own client: $(docker_client 2>/dev/null || echo '(none: make docker)')"
}

case ${1:-install} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    release) cmd_release ;;
    restore-host) cmd_restore_host ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown command '$1'; use install, start, stop, status, env, restore-host or release" ;;
esac
