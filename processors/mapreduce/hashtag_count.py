"""Hourly hashtag counts from the lake: `map` and `reduce` for Hadoop Streaming (tab-separated lines)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from itertools import groupby

from fedilake.contracts import Envelope, EnvelopeError
from processors.metrics import hashtag_rows


def map_lines(lines: Iterable[str]) -> Iterator[str]:
    """`<hour bucket>\\t<hashtag>\\t1` for every hashtag of every status envelope."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            envelope = Envelope.from_bytes(line)
        except EnvelopeError:
            # The lake holds only envelopes; anything else was dead-lettered upstream.
            continue
        for row in hashtag_rows(envelope):
            yield f"{row.bucket}\t{row.dimension}\t1"


def reduce_lines(lines: Iterable[str]) -> Iterator[str]:
    """Sums the counts of each (bucket, hashtag); input is sorted by key, as Hadoop delivers it."""
    keyed = (line.rstrip("\n").rsplit("\t", 1) for line in lines if line.strip())
    for key, group in groupby(keyed, key=lambda parts: parts[0]):
        yield f"{key}\t{sum(int(parts[1]) for parts in group)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["map"], ["reduce"], ["combine"]):
        sys.stderr.write("usage: python -m processors.mapreduce.hashtag_count map|combine|reduce\n")
        return 2
    stage = map_lines if args == ["map"] else reduce_lines
    for out in stage(sys.stdin):
        sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
