"""The open-file limit of a server process (meshd, mesh-sidecar).

Every proxied connection holds two descriptors in a sidecar (and a splicing tunnel four
while it moves a burst), every watching sidecar one in meshd. Distributions start
processes with a soft limit of 1,024 and a hard limit far above it; like Go's runtime
and Envoy's deployments, the servers raise the soft limit to the hard one at start.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_file_limit"]

log = logging.getLogger(__name__)

_CEILING = 1 << 20
"""Above this the kernel's own nr_open default refuses it anyway."""


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (at most 2**20); the limit in force.
    A limit that cannot be raised is kept, with one line in the log saying so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _CEILING if hard == resource.RLIM_INFINITY else min(hard, _CEILING)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "open-file limit stays at %d (raising it to %d failed: %s); raise it with "
                "`ulimit -n` or LimitNOFILE= in the unit for more than ~%d connections",
                soft,
                want,
                exc,
                soft // 2,
            )
            return soft
        return want
    return soft
