#!/usr/bin/env bash
# meshd's Compose stack (compose/docker-compose.yml) on a machine with no container
# registry: local images, this checkout's Docker engine, one fixed project name.
#
#   scripts/compose.sh up [--no-build] [--no-monitoring]
#                     start the engine if needed (scripts/docker.sh), build the images
#                     (scripts/images.sh compose: seconds when they are current), bring
#                     the stack up with Prometheus, wait until every service is healthy
#                     and http://127.0.0.1:8080/ answers 200, and say what to try next
#   scripts/compose.sh down [--keep-volumes]
#                     stop and remove the stack's containers, network and volumes
#                     (--keep-volumes keeps the volumes; `stop` keeps everything)
#   scripts/compose.sh stop            stop the containers, state kept (`up` starts them)
#   scripts/compose.sh status          the services, their health, meshctl proxy-status
#   scripts/compose.sh logs [ARGS]     `compose logs ARGS` (e.g. --tail 50 meshd)
#   scripts/compose.sh compose ARGS    any compose command with this stack's settings,
#                                      e.g. `scripts/compose.sh compose exec meshd meshctl get vs`
#
# Idempotent: `up` on a running stack only changes what differs. The project is
# meshd-compose (compose/.env); images come from these variables, defaulting to the ones
# scripts/images.sh builds (users with a registry run `docker compose up` in compose/
# and get the public images instead, see docs/compose.md):
#   MESHD_IMAGE=meshd:local CONSUL_IMAGE=meshd-consul:local
#   OPENBAO_IMAGE=meshd-openbao:local PROMETHEUS_IMAGE=meshd-prometheus:local
# Grafana (the monitoring profile's other service) has no local image and is not started.
#
# Compose: `docker compose` (v2) when the docker client has it, else docker-compose (v1;
# Debian's); MESHD_COMPOSE="docker compose" chooses. MESHD_DOCKER_HOST points at an
# engine of your own (scripts/docker.sh). MESHD_COMPOSE_TIMEOUT: seconds `up` waits for
# the stack to be healthy (default 240).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_tag=compose
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

PROJECT=meshd-compose
COMPOSE_DIR=$root/compose
COMPOSE_FILE_PATH=$COMPOSE_DIR/docker-compose.yml
WEB_PORT=${WEB_PORT:-8080}
TIMEOUT=${MESHD_COMPOSE_TIMEOUT:-240}
ONE_SHOTS=(vault-init mesh-init)

export COMPOSE_PROJECT_NAME=$PROJECT WEB_PORT
export MESHD_IMAGE=${MESHD_IMAGE:-meshd:local}
export CONSUL_IMAGE=${CONSUL_IMAGE:-meshd-consul:local}
export OPENBAO_IMAGE=${OPENBAO_IMAGE:-meshd-openbao:local}
export PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-meshd-prometheus:local}
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-120}

if [ -n "${MESHD_DOCKER_HOST:-}" ]; then
    export DOCKER_HOST=$MESHD_DOCKER_HOST
else
    export DOCKER_HOST=unix://$root/.deps/docker/run/docker.sock
fi
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

dk() { "$(docker_client)" "$@"; }

compose_cmd=()
find_compose() {
    [ ${#compose_cmd[@]} -eq 0 ] || return 0
    if [ -n "${MESHD_COMPOSE:-}" ]; then
        read -r -a compose_cmd <<< "$MESHD_COMPOSE"
    elif dk compose version >/dev/null 2>&1; then
        compose_cmd=("$(docker_client)" compose)
    elif command -v docker-compose >/dev/null; then
        compose_cmd=(docker-compose)
    else
        die "neither 'docker compose' nor docker-compose is installed: run 'make docker' (Debian's docker-compose)"
    fi
}

# compose ARGS...: compose with this stack's file, project and images.
compose() {
    find_compose
    "${compose_cmd[@]}" --project-directory "$COMPOSE_DIR" -f "$COMPOSE_FILE_PATH" -p "$PROJECT" "$@"
}

engine_up() {
    if [ -n "${MESHD_DOCKER_HOST:-}" ]; then
        dk version >/dev/null 2>&1 || die "MESHD_DOCKER_HOST=$MESHD_DOCKER_HOST does not answer; start that engine, or unset MESHD_DOCKER_HOST to use this checkout's (scripts/docker.sh)"
        return 0
    fi
    "$root/scripts/docker.sh" start || die "the Docker engine did not start (see above); 'make docker' installs it"
}

engine_answers() { timeout 10 "$(docker_client)" version >/dev/null 2>&1; }

# The stack's containers: "service container-id" lines (all, also stopped ones).
containers() {
    local id
    for id in $(dk ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
        dk inspect --format '{{ index .Config.Labels "com.docker.compose.service" }} {{ .Id }}' "$id"
    done
}

# state ID: healthy | starting | unhealthy | running (no health check) | exited:CODE | ...
state() {
    dk inspect --format '{{ if .State.Running }}{{ if .State.Health }}{{ .State.Health.Status }}{{ else }}running{{ end }}{{ else }}{{ .State.Status }}:{{ .State.ExitCode }}{{ end }}' "$1" 2>/dev/null || echo gone
}

is_one_shot() { local s; for s in "${ONE_SHOTS[@]}"; do [ "$1" = "$s" ] && return 0; done; return 1; }

# Print why a service is not well: its health check's last output and its last log lines.
explain() {
    local service=$1 id=$2
    echo "compose: --- $service ($(state "$id")): last health check output ---" >&2
    dk inspect --format '{{ if .State.Health }}{{ range .State.Health.Log }}{{ .Output }}{{ end }}{{ end }}' "$id" 2>/dev/null | tail -n 5 | sed 's/^/  | /' >&2 || true
    echo "compose: --- $service: last log lines ---" >&2
    dk logs --tail 25 "$id" 2>&1 | sed 's/^/  | /' >&2 || true
}

# Wait until every service is healthy (running, for those without a check) and the
# one-shot steps exited 0.
wait_healthy() {
    local deadline=$(( $(date +%s) + TIMEOUT )) pending bad service id st last=""
    while :; do
        pending=() bad=()
        while read -r service id; do
            [ -n "$service" ] || continue
            st=$(state "$id")
            if is_one_shot "$service"; then
                case $st in
                    exited:0) ;;
                    exited:*|dead:*) bad+=("$service:$id") ;;
                    *) pending+=("$service") ;;
                esac
            else
                case $st in
                    healthy|running) ;;
                    exited:*|dead:*|gone) bad+=("$service:$id") ;;
                    *) pending+=("$service($st)") ;;
                esac
            fi
        done < <(containers)
        if [ ${#bad[@]} -gt 0 ]; then
            for service in "${bad[@]}"; do explain "${service%%:*}" "${service#*:}"; done
            die "${bad[*]%%:*} stopped (above: why); fix it and run 'scripts/compose.sh up' again, or start afresh with 'scripts/compose.sh down' first"
        fi
        [ ${#pending[@]} -eq 0 ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            while read -r service id; do
                case " ${pending[*]} " in *" $service"[\ \(]*) explain "$service" "$id" ;; esac
            done < <(containers)
            die "not healthy after ${TIMEOUT}s: ${pending[*]} (above: why); see 'scripts/compose.sh logs', or raise MESHD_COMPOSE_TIMEOUT"
        fi
        if [ "${pending[*]}" != "$last" ]; then
            say "waiting for: ${pending[*]}"
            last="${pending[*]}"
        fi
        sleep 2
    done
}

# The Python that runs the small helpers below: the checkout's venv, else the system's.
PY=$root/.venv/bin/python
[ -x "$PY" ] || PY=python3

# GET URL: the status code (000 when there is no answer) and the body, on one line.
http_get() {
    "$PY" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=10) as answer:
        print(answer.status, answer.read().decode(errors="replace").strip())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode(errors="replace").strip())
except OSError as exc:
    print("000", exc)
EOF
}

wait_web() {
    local url=http://127.0.0.1:$WEB_PORT/ deadline=$(( $(date +%s) + 60 )) answer
    while :; do
        answer=$(http_get "$url")
        if [ "${answer%% *}" = 200 ]; then
            say "$url answers: ${answer#* }"
            return 0
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            die "$url still answers '${answer}' after 60s; see 'scripts/compose.sh logs web web-sidecar api-v1-sidecar'"
        fi
        sleep 1
    done
}

# Port 8080 (WEB_PORT) must be free, or ours already.
check_port() {
    local ours
    ours=$(dk ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=web" 2>/dev/null || true)
    [ -n "$ours" ] && return 0
    if "$PY" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$WEB_PORT" 2>/dev/null; then
        return 0
    fi
    die "127.0.0.1:$WEB_PORT is in use by another program (ss -ltnp 'sport = :$WEB_PORT' shows which); stop it, or publish the demo elsewhere with WEB_PORT=8081 scripts/compose.sh up"
}

cmd_up() {
    local build=1 monitoring=1 arg t0
    for arg in "$@"; do
        case $arg in
            --no-build) build=0 ;;
            --no-monitoring) monitoring=0 ;;
            *) die "unknown argument '$arg' for up; use --no-build and --no-monitoring" ;;
        esac
    done
    t0=$(date +%s)
    engine_up
    check_port
    if [ "$build" = 1 ]; then
        say "images: scripts/images.sh compose (seconds when they are current)"
        "$root/scripts/images.sh" compose || die "building the images failed (see above)"
    fi
    for image in "$MESHD_IMAGE" "$CONSUL_IMAGE" "$OPENBAO_IMAGE" $([ "$monitoring" = 1 ] && echo "$PROMETHEUS_IMAGE"); do
        dk image inspect "$image" >/dev/null 2>&1 || die "no image $image: run 'scripts/images.sh compose' (or scripts/compose.sh up without --no-build)"
    done
    find_compose
    say "starting the stack (project $PROJECT, ${compose_cmd[*]}): consul, openbao, vault-init, meshd, mesh-init, web, api-v1, api-v2, counter and their sidecars"
    compose up -d --remove-orphans --no-build || die "compose up failed (above); 'scripts/compose.sh logs' shows the services' output"
    if [ "$monitoring" = 1 ]; then
        say "starting Prometheus (127.0.0.1:${PROMETHEUS_PORT:-9090})"
        compose up -d --no-build --no-deps prometheus || die "compose up prometheus failed (above)"
    fi
    wait_healthy
    say "every service is healthy"
    wait_web
    say "up in $(elapsed "$t0"). Try:"
    cat <<EOF
  curl http://127.0.0.1:$WEB_PORT/          # web -> api v1 -> counter, over mTLS
  scripts/compose.sh compose exec meshd meshctl proxy-status
  scripts/compose.sh compose exec meshd meshctl apply -f /etc/meshd/rules/api-split.yaml
  scripts/compose.sh compose exec meshd meshctl apply -f /etc/meshd/rules/api-v2.yaml
  curl -s 127.0.0.1:${PROMETHEUS_PORT:-9090}/api/v1/query --data-urlencode 'query=sum by (destination_service_name) (istio_requests_total)'
  scripts/compose.sh status | logs meshd    # the services / one's output
  make compose-down                         # remove it all (containers, network, volumes)
(scripts/compose.sh compose ARGS is ${compose_cmd[*]} ARGS in compose/, with DOCKER_HOST=$DOCKER_HOST)
EOF
}

cmd_down() {
    local volumes=(--volumes) arg
    for arg in "$@"; do
        case $arg in
            --keep-volumes) volumes=() ;;
            -v|--volumes) ;;
            *) die "unknown argument '$arg' for down; use --keep-volumes" ;;
        esac
    done
    if ! engine_answers; then
        say "the Docker engine is not running: nothing of the stack runs"
        return 0
    fi
    say "removing the stack's containers and network${volumes[*]:+ and volumes}"
    compose --profile monitoring down "${volumes[@]}" --remove-orphans --timeout 10 \
        || die "compose down failed (above)"
    say "down"
}

cmd_status() {
    engine_answers || { say "the Docker engine is not running (scripts/docker.sh start)"; return 1; }
    compose --profile monitoring ps
    if [ -n "$(dk ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=meshd)" ]; then
        compose exec -T meshd meshctl proxy-status || true
    fi
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    stop) engine_answers && compose --profile monitoring stop ;;
    status) cmd_status ;;
    logs) shift; compose --profile monitoring logs "$@" ;;
    compose) shift; compose "$@" ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "usage: scripts/compose.sh up|down|stop|status|logs|compose (see --help)" ;;
esac
