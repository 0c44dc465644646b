"""The lake writer and compaction against an in-memory WebHDFS fake, with other writers
landing at the worst moments: a delete must never be judged irrelevant to an hour holding
its status, and a range landed by one member is never landed again by another."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hdfs import HdfsError

import sinks.compactor as compactor_module
from fedilake.contracts import Envelope, EventKind, PartFile
from sinks.compactor import HourlyCompactor
from sinks.lake import LakeWriter, Landing, PartitionBuffer, hour_of

HOUR = datetime(2023, 5, 6, 7, tzinfo=UTC)
LATER = datetime.now(UTC) + timedelta(days=400)
TOPIC = "ev"
SEVEN = f"/r/raw/{TOPIC}/dt=2023-05-06/hr=07"


class FakeHdfs:
    """The calls of `hdfs.InsecureClient` the lake makes; `hooks` see each (op, path)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.dirs = {"/"}
        self.hooks: list[Callable[[str, str], None]] = []
        self.clock = 1000

    def _hook(self, op: str, path: str) -> None:
        for hook in list(self.hooks):
            hook(op, path)

    def _mkdirs(self, directory: str) -> None:
        while directory not in self.dirs:
            self.dirs.add(directory)
            directory = posixpath.dirname(directory)

    def write(self, path: str, data: bytes = b"", overwrite: bool = False) -> None:
        self._hook("write", path)
        if path in self.files and not overwrite:
            raise HdfsError("exists")
        self._mkdirs(posixpath.dirname(path))
        self.clock += 1
        self.files[path] = (bytes(data), self.clock)

    def status(self, path: str, strict: bool = True) -> dict[str, Any] | None:
        if path in self.files:
            data, mtime = self.files[path]
            return {"length": len(data), "modificationTime": mtime, "type": "FILE"}
        if path in self.dirs:
            return {"length": 0, "modificationTime": 0, "type": "DIRECTORY"}
        if strict:
            raise HdfsError(f"no {path}")
        return None

    def list(self, directory: str, status: bool = False) -> list[Any]:
        if directory not in self.dirs:
            raise HdfsError(f"no directory {directory}")
        names = sorted(
            {
                posixpath.basename(p)
                for p in [*self.files, *self.dirs]
                if p != directory and posixpath.dirname(p) == directory
            }
        )
        if status:
            return [(n, self.status(f"{directory}/{n}")) for n in names]
        return names

    @contextlib.contextmanager
    def read(self, path: str) -> Iterator[io.BytesIO]:
        self._hook("read", path)
        if path not in self.files:
            raise HdfsError(f"no file {path}")
        yield io.BytesIO(self.files[path][0])

    def delete(self, path: str, recursive: bool = False) -> bool:
        if path in self.files:
            del self.files[path]
            return True
        return False

    def rename(self, source: str, target: str) -> None:
        if source not in self.files or target in self.files:
            raise HdfsError(f"rename {source} -> {target}")
        self._mkdirs(posixpath.dirname(target))
        self.files[target] = self.files.pop(source)


def status(n: int, kind: EventKind = EventKind.STATUS) -> Envelope:
    return Envelope(
        kind=kind,
        instance="https://c.example",
        stream="public",
        event="update",
        received_at=HOUR,
        created_at=HOUR + timedelta(seconds=n),
        uri=f"https://c.example/s/{n}",
        status_id=str(n),
        payload="{}",
    )


def delete(n: int) -> Envelope:  # lands in the 09:00 hour, its status in 07:00
    return Envelope(
        kind=EventKind.DELETE,
        instance="https://c.example",
        stream="public",
        event="delete",
        received_at=HOUR + timedelta(hours=2),
        created_at=None,
        uri=None,
        status_id=str(n),
        payload=str(n),
    )


def buffered(first: int, envelopes: list[Envelope]) -> PartitionBuffer:
    buffer = PartitionBuffer()
    for offset, envelope in enumerate(envelopes, first):
        moment = envelope.event_time()
        kind = envelope.kind
        buffer.add(offset, hour_of(moment), envelope.to_bytes(), moment, kind is EventKind.DELETE)
    return buffer


def flush(writer: LakeWriter, partition: int, first: int, envelopes: list[Envelope]) -> Landing:
    return writer.write(TOPIC, partition, buffered(first, envelopes))


def kept(client: FakeHdfs) -> list[tuple[str, str | None]]:
    found = []
    for name in client.list(SEVEN):
        if PartFile.parse(name):
            with client.read(f"{SEVEN}/{name}") as reader:
                for line in gzip.decompress(reader.read()).splitlines():
                    envelope = Envelope.from_bytes(line)
                    found.append((envelope.kind.value, envelope.status_id))
    return sorted(found)


def lake() -> tuple[FakeHdfs, LakeWriter, HourlyCompactor]:
    client = FakeHdfs()
    compactor = HourlyCompactor(client, "/r", target_bytes=1 << 20)
    return client, LakeWriter(client, "/r"), compactor


def test_a_file_landing_during_a_compaction_is_compacted_again_before_it_counts() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])
    flush(writer, 0, 5, [status(k) for k in range(5, 8)])

    def late_edit(op: str, path: str) -> None:
        if op == "write" and path.endswith("._compaction.json.tmp") and not client.hooks[1:]:
            client.hooks.append(lambda *_: None)  # once
            flush(writer, 0, 8, [status(50, EventKind.EDIT)])

    client.hooks.append(late_edit)
    compactor.run(TOPIC, now=LATER)  # sealed without the edit, which it never read
    client.hooks.clear()
    compactor.run(TOPIC, now=LATER)  # the marker does not name it: compacted again
    flush(writer, 1, 0, [delete(50)])
    compactor.run(TOPIC, now=LATER)
    assert ("edit", "50") not in kept(client)
    assert compactor.close_day(TOPIC, HOUR.date(), now=LATER).closed


def test_a_file_landing_while_new_deletes_are_checked_gets_every_delete() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(8)])
    flush(writer, 1, 0, [delete(60)])  # its status lands only later
    compactor.run(TOPIC, now=LATER)
    flush(writer, 1, 1, [delete(3)])

    def late_status(op: str, path: str) -> None:
        if op == "read" and path.endswith("/_statuses") and not client.hooks[1:]:
            client.hooks.append(lambda *_: None)  # once
            flush(writer, 0, 8, [status(60)])  # a backfilled status, late in its hour

    client.hooks.append(late_status)
    compactor.run(TOPIC, now=LATER)  # decided with the new delete only: leaves the hour
    client.hooks.clear()
    compactor.run(TOPIC, now=LATER)  # the late file: compacted whole, with every delete
    assert kept(client) == [("status", str(k)) for k in (0, 1, 2, 4, 5, 6, 7)]


def test_a_torn_status_index_compacts_the_hour_again() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(4)])
    compactor.run(TOPIC, now=LATER)
    data, mtime = client.files[f"{SEVEN}/_statuses"]
    client.files[f"{SEVEN}/_statuses"] = (data[:-3], mtime)
    flush(writer, 1, 0, [delete(2)])
    compactor.run(TOPIC, now=LATER)
    assert kept(client) == [("status", str(k)) for k in (0, 1, 3)]


def test_an_hour_no_new_delete_concerns_records_it_at_most_every_few_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(4)])
    compactor.run(TOPIC, now=LATER)
    success = client.files[f"{SEVEN}/_SUCCESS"]
    flush(writer, 1, 0, [delete(99)])  # no status of 07:00
    assert [r.hour for r in compactor.run(TOPIC, now=LATER)] == [HOUR + timedelta(hours=2)]
    assert client.files[f"{SEVEN}/_SUCCESS"] == success  # remembered, not written
    assert compactor.close_day(TOPIC, HOUR.date(), now=LATER).closed
    monkeypatch.setattr(compactor_module, "FRONTIER_PERSIST_S", 0.0)
    flush(writer, 1, 1, [delete(98)])
    compactor.run(TOPIC, now=LATER)
    with client.read(f"{SEVEN}/_SUCCESS") as reader:
        assert json.loads(reader.read())["tombstones"] == {"1": 1}
    assert kept(client) == [("status", str(k)) for k in range(4)]


def test_an_hour_compacted_by_an_older_rule_is_compacted_again_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sinks.compaction as compaction_module

    client, writer, compactor = lake()
    refresh = replace(status(2), kind=EventKind.REFRESH, event="refresh")
    flush(writer, 0, 0, [*(status(k) for k in range(4)), refresh])
    flush(writer, 1, 0, [delete(2)])
    with monkeypatch.context() as old:  # the rule before refreshes carried a status
        old.setattr(compaction_module, "_ABOUT_A_STATUS", frozenset({"status", "edit"}))
        old.setattr(compactor_module, "STATUS_INDEX_VERSION", 1)
        compactor.run(TOPIC, now=LATER)
    assert ("refresh", "2") in kept(client)
    results = compactor.run(TOPIC, now=LATER)  # every hour the older rule compacted
    assert sorted(r.hour for r in results) == [HOUR, HOUR + timedelta(hours=2)]
    assert kept(client) == [("status", str(k)) for k in (0, 1, 3)]
    assert compactor.run(TOPIC, now=LATER) == []


def landed_offsets(client: FakeHdfs) -> list[tuple[int, int]]:
    """The offset ranges of the visible part files of partition 0 (hidden temps excluded)."""
    return sorted(
        (part.first_offset, part.last_offset)
        for path in client.files
        if (part := PartFile.parse(posixpath.basename(path))) is not None
        and part.partition == 0
        and "/raw/" in path
    )


def test_a_member_paused_past_a_rebalance_cannot_land_a_range_another_landed() -> None:
    client, writer, _compactor = lake()
    assert flush(writer, 0, 0, [status(k) for k in range(5)]) is Landing.LANDED
    # The next owner resumed at 5 and landed 5..9 while the old one was paused with 5..7.
    assert flush(writer, 0, 5, [status(k) for k in range(5, 10)]) is Landing.LANDED
    assert flush(writer, 0, 5, [status(k) for k in range(5, 8)]) is Landing.FENCED
    assert landed_offsets(client) == [(0, 4), (5, 9)]
    assert not [p for p in client.files if p.endswith(".tmp")]  # its temps are gone
    assert writer.recover(TOPIC, 0) == 10


def test_the_fence_holds_after_the_manifests_it_would_collide_with_are_pruned() -> None:
    client, writer, _compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])
    flush(writer, 0, 5, [status(k) for k in range(5, 10)])
    flush(writer, 0, 10, [status(k) for k in range(10, 12)])  # prunes the one at 5
    assert flush(writer, 0, 5, [status(k) for k in range(5, 8)]) is Landing.FENCED
    assert landed_offsets(client) == [(0, 4), (5, 9), (10, 11)]
    assert writer.recover(TOPIC, 0) == 12


def test_of_two_members_landing_from_one_offset_the_later_is_fenced_at_its_manifest() -> None:
    client, writer, _compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])

    def rival_lands_first(op: str, path: str) -> None:
        if op == "write" and "/_offsets/" in path and path.endswith(".tmp") and client.hooks:
            client.hooks.clear()
            assert flush(writer, 0, 5, [status(k) for k in range(5, 9)]) is Landing.LANDED

    client.hooks.append(rival_lands_first)
    assert flush(writer, 0, 5, [status(k) for k in range(5, 7)]) is Landing.FENCED
    assert landed_offsets(client) == [(0, 4), (5, 8)]
    assert writer.recover(TOPIC, 0) == 9


def test_a_retried_flush_whose_manifest_landed_only_finishes_its_renames() -> None:
    client, writer, _compactor = lake()
    buffer = buffered(0, [status(k) for k in range(5)])

    class DiesBeforeRenames(LakeWriter):
        def _rename_all(self, moves: object) -> None:
            raise OSError("HDFS went away after the manifest")

    with pytest.raises(OSError):
        DiesBeforeRenames(client, "/r").write(TOPIC, 0, buffer)
    assert landed_offsets(client) == []
    assert writer.write(TOPIC, 0, buffer) is Landing.LANDED
    assert landed_offsets(client) == [(0, 4)]


def test_pruning_keeps_a_later_manifest_another_member_landed() -> None:
    client, writer, _compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])

    buffer = buffered(5, [status(k) for k in range(5, 7)])

    class RivalBeforePrune(LakeWriter):
        # Between our renames and our pruning, the next owner recovers from our manifest
        # and lands the next range.
        def _prune_manifests(self, topic: str, partition: int, keep: str) -> None:
            assert writer.recover(TOPIC, 0) == 7
            assert flush(writer, 0, 7, [status(k) for k in range(7, 9)]) is Landing.LANDED
            super()._prune_manifests(topic, partition, keep)

    assert RivalBeforePrune(client, "/r").write(TOPIC, 0, buffer) is Landing.LANDED
    assert writer.recover(TOPIC, 0) == 9  # its manifest survived our pruning


def test_a_member_holding_the_same_range_never_revives_files_compaction_merged() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])
    stale = buffered(5, [status(k) for k in range(5, 10)])  # both members read 5..9

    def other_lands_and_compacts(op: str, path: str) -> None:
        if op == "write" and "/raw/" in path and path.endswith(".tmp") and client.hooks:
            client.hooks.clear()  # we are about to write our temporary files: paused
            assert flush(writer, 0, 5, [status(k) for k in range(5, 10)]) is Landing.LANDED
            compactor.run(TOPIC, now=LATER)  # the partition is idle: its hour closes

    client.hooks.append(other_lands_and_compacts)
    assert writer.write(TOPIC, 0, stale) is Landing.FENCED
    assert kept(client) == [("status", str(k)) for k in range(10)]
    assert not [p for p in client.files if p.endswith(".tmp")]


def test_recovery_never_renames_the_temporary_files_of_another_member() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(k) for k in range(5)])
    stale = buffered(5, [status(k) for k in range(5, 10)])
    steps: list[str] = []

    def interleave(op: str, path: str) -> None:
        if op == "write" and "/raw/" in path and path.endswith(".tmp") and not steps:
            steps.append("other landed")  # we are about to write our temporary files
            client.hooks.clear()
            assert flush(writer, 0, 5, [status(k) for k in range(5, 10)]) is Landing.LANDED
            compactor.run(TOPIC, now=LATER)
            client.hooks.append(interleave)
        elif op == "write" and "/_offsets/" in path and steps == ["other landed"]:
            steps.append("recovered")  # our temps are written; a rebalance reads the lake
            assert writer.recover(TOPIC, 0) == 10

    client.hooks.append(interleave)
    assert writer.write(TOPIC, 0, stale) is Landing.FENCED
    assert steps == ["other landed", "recovered"]
    assert kept(client) == [("status", str(k)) for k in range(10)]


def temps(client: FakeHdfs) -> list[str]:
    return sorted(posixpath.basename(p) for p in client.files if p.endswith(".tmp"))


def test_temporary_files_no_flush_can_land_are_swept_by_compaction() -> None:
    client, writer, compactor = lake()

    class KilledBeforeManifest(LakeWriter):
        def _commit(self, *args: Any) -> Landing:
            raise OSError("kill -9 between the temporary files and the manifest")

    with pytest.raises(OSError):  # offsets 0 and 1, as a crash leaves them
        KilledBeforeManifest(client, "/r").write(TOPIC, 0, buffered(0, [status(0), delete(9)]))
    stranded = temps(client)
    assert len(stranded) == 3  # one per event hour, and the tombstone file
    compactor.run(TOPIC, now=LATER)
    assert temps(client) == stranded  # nothing landed yet: it may be the first flush's
    # After the restart, the same offsets land again under a new flush's names.
    assert flush(writer, 0, 0, [status(0), delete(9)]) is Landing.LANDED
    compactor.run(TOPIC, now=LATER)
    assert temps(client) == []
    assert kept(client) == [("status", "0")]


def test_the_renames_a_crash_left_to_recovery_are_never_swept() -> None:
    client, writer, compactor = lake()
    flush(writer, 0, 0, [status(0)])

    class KilledBeforeRenames(LakeWriter):
        def _rename_all(self, moves: object) -> None:
            raise OSError("kill -9 between the manifest and the renames")

    with pytest.raises(OSError):
        KilledBeforeRenames(client, "/r").write(TOPIC, 0, buffered(1, [status(1), status(2)]))
    assert len(temps(client)) == 1
    compactor.run(TOPIC, now=LATER)
    assert len(temps(client)) == 1  # the latest manifest names it: recovery renames it
    assert writer.recover(TOPIC, 0) == 3
    compactor.run(TOPIC, now=LATER)
    assert temps(client) == [] and kept(client) == [("status", str(k)) for k in range(3)]
