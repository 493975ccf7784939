"""bench/protocol_bench.py works: its sanity check (each implementation reads what the
others write) passes and its table renders. Times are never asserted."""

from __future__ import annotations

from bench import protocol_bench


def test_the_benchmark_does_the_work_it_times() -> None:
    protocol_bench.sanity_check()


def test_the_table_renders() -> None:
    row = {impl: {"us": 2.0, "mb_s": 100.0} for impl in protocol_bench.IMPLEMENTATIONS}
    results = {
        "python": "3",
        "httptools": "0",
        "h11": "0",
        "workloads": [
            {"key": "k", "title": "small", "body_bytes": 0, **row},
            {"key": "b", "title": "big", "body_bytes": 131072, **row},
        ],
    }
    text = protocol_bench.table(results)
    assert "small" in text
    assert "100 MB/s" in text
    assert "1.0x" in text
