"""Fixtures for tests that run a real Docker engine (tests.support.docker_engine)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.docker_engine import (
    docker_engine,
    engine_report_sections,
    meshd_image,
)

__all__ = ["docker_engine", "meshd_image"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        report.sections.extend(engine_report_sections(item))
    return report
