"""meshd and mesh-sidecar raise their soft open-file limit to the hard one at start."""

from __future__ import annotations

import resource
import subprocess
import sys

CHECK = (
    "import resource\n"
    "from meshd.fdlimit import raise_open_file_limit\n"
    "got = raise_open_file_limit()\n"
    "print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
)


def run_with_soft_limit(soft: int, hard: int) -> tuple[int, int, int]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    got, now_soft, now_hard = (int(x) for x in out)
    return got, now_soft, now_hard


def test_a_low_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    assert run_with_soft_limit(256, hard) == (target, target, hard)


def test_a_limit_already_at_the_hard_one_is_kept() -> None:
    assert run_with_soft_limit(300, 300) == (300, 300, 300)
