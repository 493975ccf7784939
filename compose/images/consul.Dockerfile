# Consul for the compose stack on a machine with no container registry (this project's
# machines and CI): the local base image plus the consul binary of .deps/bin (Debian's
# package, make deps). Users on a normal machine run hashicorp/consul instead; the
# compose file works with both (see compose/README.md).
#
#   scripts/images.sh consul    # builds meshd-consul:local; context: a directory
#                               # holding just the binary, named `consul`
#
# Its command line is Consul's own: the compose file gives `agent ...`, which this
# image's entrypoint runs as `consul agent ...` (hashicorp/consul's does the same).
ARG BASE_IMAGE=meshd-base:bookworm
FROM ${BASE_IMAGE}
ARG CONSUL_UID=10100

LABEL org.opencontainers.image.title="meshd-consul" \
      org.opencontainers.image.description="Consul for meshd's compose stack, built without a registry"

COPY consul /usr/local/bin/consul
# Data in /consul/data (a volume in the compose file), as in hashicorp/consul.
RUN set -eu; \
    groupadd --gid "$CONSUL_UID" consul; \
    useradd --uid "$CONSUL_UID" --gid consul --home-dir /consul --no-create-home \
        --shell /usr/sbin/nologin consul; \
    install -d -o consul -g consul -m 0750 /consul /consul/data /consul/config; \
    chmod 0755 /usr/local/bin/consul; \
    consul version

USER consul
WORKDIR /consul
# 8500 HTTP API and UI, 8600 DNS, 8300-8302 server RPC and gossip.
EXPOSE 8500 8600 8300 8301 8302
ENTRYPOINT ["consul"]
CMD ["agent", "-dev", "-client=0.0.0.0"]
