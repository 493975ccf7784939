"""The Compose stack, up once for tests/compose/test_stack.py and down at the end (also
when a test or the bring-up fails); a failing test's report gets ``compose ps`` and
the logs of the services that are not healthy."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.compose.stack import WEB_PORT, Stack, compose_sh, port_in_use
from tests.support.docker_engine import DockerEngine, build_images


@pytest.fixture(scope="module")
def stack(docker_engine: DockerEngine, pytestconfig: pytest.Config) -> Iterator[Stack]:
    # A clean start: whatever an earlier, interrupted run left goes first.
    compose_sh(docker_engine, "down", timeout=180)
    if port_in_use(WEB_PORT):
        pytest.fail(
            f"127.0.0.1:{WEB_PORT} is in use, and the compose stack publishes its demo there; "
            f"stop what listens on it (ss -ltnp 'sport = :{WEB_PORT}') and run the tests again",
            pytrace=False,
        )
    build_images(docker_engine, pytestconfig, "compose")
    stack = Stack(docker_engine)
    try:
        up = compose_sh(docker_engine, "up", "--no-build")
        if up.returncode != 0:
            pytest.fail(
                f"scripts/compose.sh up failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr}"
                f"\n--- the stack ---\n{stack.report()}",
                pytrace=False,
            )
        yield stack
    finally:
        down = compose_sh(docker_engine, "down", timeout=180)
        if down.returncode != 0:
            print(f"scripts/compose.sh down failed:\n{down.stdout}\n{down.stderr}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        try:
            report.sections.append(("compose stack", stack.report()))
        except Exception as exc:  # the report must not hide the test's own failure
            report.sections.append(("compose stack", f"(could not collect: {exc})"))
    return report
