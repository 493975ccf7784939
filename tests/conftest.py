"""Suite-wide options and fixtures. Fixtures that start real components (Consul,
OpenBao) live in ``tests.support.components``."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.components",
    "tests.support.meshd_process",
    "tests.support.docker_engine",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.json from the current compiler output instead of comparing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
