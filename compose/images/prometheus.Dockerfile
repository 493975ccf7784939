# Prometheus for the compose stack's `monitoring` profile on a machine with no container
# registry: the local base image plus prometheus and promtool from Debian's own package
# (bookworm's `prometheus`, fetched from the machine's Debian mirror by
# scripts/images.sh). Users on a normal machine run prom/prometheus instead; the compose
# file works with both (see compose/README.md).
#
#   scripts/images.sh prometheus   # builds meshd-prometheus:local; context: a directory
#                                  # with usr/bin/{prometheus,promtool} and
#                                  # usr/share/prometheus from the package
#
# Debian's build serves the API and the classic web pages; the pages' JavaScript comes
# from libjs-* packages this image leaves out, so query with the API or Grafana.
ARG BASE_IMAGE=meshd-base:bookworm
FROM ${BASE_IMAGE}
ARG PROMETHEUS_UID=10102

LABEL org.opencontainers.image.title="meshd-prometheus" \
      org.opencontainers.image.description="Prometheus (Debian's package) for meshd's compose stack, built without a registry"

COPY usr/ /usr/
# Data in /prometheus (a volume in the compose file), as in prom/prometheus.
RUN set -eu; \
    groupadd --gid "$PROMETHEUS_UID" prometheus; \
    useradd --uid "$PROMETHEUS_UID" --gid prometheus --home-dir /prometheus \
        --no-create-home --shell /usr/sbin/nologin prometheus; \
    install -d -o prometheus -g prometheus -m 0750 /prometheus; \
    install -d -m 0755 /etc/prometheus; \
    chmod 0755 /usr/bin/prometheus /usr/bin/promtool; \
    prometheus --version; promtool --version

USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
