"""Reading the Hadoop Streaming job's output into batch values."""

from __future__ import annotations

import pytest

from fedilake.contracts import Granularity, Metric, MetricRow
from processors.batch import parse_hashtag_output


def _row(bucket: str, tag: str) -> MetricRow:
    return MetricRow(Metric.HASHTAG, Granularity.HOUR, bucket, tag)


def test_parse_hashtag_output() -> None:
    lines = [
        "2026112310\trust\t12\n",
        "2026112310\tcaf\u00e9\t3",
        "",
        "   \n",
        "2026112311\trust\t1",
    ]
    assert parse_hashtag_output(lines) == {
        _row("2026112310", "rust"): 12,
        _row("2026112310", "caf\u00e9"): 3,
        _row("2026112311", "rust"): 1,
    }


def test_parse_hashtag_output_of_nothing() -> None:
    assert parse_hashtag_output([]) == {}


def test_parsed_rows_are_hourly_hashtag_rows_with_usable_keys() -> None:
    [row] = parse_hashtag_output(["2026112310\trust\t2"])
    assert row.key().startswith(MetricRow.prefix(Metric.HASHTAG, Granularity.HOUR, "2026112310"))


@pytest.mark.parametrize("line", ["2026112310\trust", "2026112310\trust\tmany", "a\tb\tc\t1"])
def test_parse_hashtag_output_refuses_malformed_lines(line: str) -> None:
    with pytest.raises(ValueError):
        parse_hashtag_output([line])
