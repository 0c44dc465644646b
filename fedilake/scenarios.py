"""Fault scenarios run against the real stack, with a verdict against the simulator's ground truth.

`fedilake scenario streamer`: three simulated instances, dropped connections, stalls,
malformed and duplicate events, a Kafka stop and optionally kill -9 of the streamer;
then every event the simulator sent must be in Kafka exactly once, in order per status.
The integration tests run the same function at a size that fits the suite.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from fedilake.contracts import Envelope, EnvelopeError, EventKind, Topics
from fedilake.kafka_topics import ensure_topics, read_since
from fedilake.pipeline import child_pids, cli_processes
from fedilake.settings import KafkaSettings, SimulatorSettings, StackSettings
from fedilake.stack.control import LocalStack, alive

log = logging.getLogger(__name__)

EventId = tuple[str, str, str | None]  # (uri, kind, version: edited_at for edits)


# --------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    """How Kafka's events compare with what the simulator says a lossless client publishes."""

    expected: int = 0
    found: int = 0
    missing: list[EventId] = field(default_factory=list)
    duplicated: list[EventId] = field(default_factory=list)
    unexpected: list[EventId] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    # For the first statuses out of order: the order sent, then the order found in Kafka.
    order_examples: list[tuple[list[EventId], list[EventId]]] = field(default_factory=list)
    dead_letters: int = 0
    unknown_kept: int = 0
    # Deletes of an instance-local id the streamer never saw a status for: published keyed
    # by instance/id (nothing stored can match them); not counted against exactness.
    unresolved_deletes: int = 0
    dead_letters_expected: int | None = None
    unknown_expected: int | None = None

    @property
    def exact(self) -> bool:
        return not (
            self.missing
            or self.duplicated
            or self.unexpected
            or self.out_of_order
            or self.dead_letters != (self.dead_letters_expected or 0)
            or self.unknown_kept != (self.unknown_expected or 0)
        )

    def summary(self) -> str:
        return (
            f"{self.expected} expected, {self.found} found: {len(self.missing)} missing, "
            f"{len(self.duplicated)} duplicated, {len(self.unexpected)} unexpected, "
            f"{len(self.out_of_order)} statuses out of order; {self.dead_letters} dead letters "
            f"(of {self.dead_letters_expected}), {self.unknown_kept} unknown events kept "
            f"(of {self.unknown_expected}), {self.unresolved_deletes} deletes of unseen statuses"
        )

    def examples(self, limit: int = 3) -> list[str]:
        """A few of each kind of failure, to start looking from."""
        lines = [f"missing: {item}" for item in self.missing[:limit]]
        lines += [f"duplicated: {item}" for item in self.duplicated[:limit]]
        lines += [f"unexpected: {item}" for item in self.unexpected[:limit]]
        for sent, found in self.order_examples[:limit]:
            lines.append(f"out of order: sent {sent}, in Kafka {found}")
        return lines


def event_id(envelope: Envelope) -> EventId | None:
    """The identity the simulator's `expected` list uses; None for kinds it does not list."""
    if envelope.kind is EventKind.EDIT:
        return (envelope.uri or "", "edit", envelope.payload_json.get("edited_at"))
    if envelope.kind in (EventKind.STATUS, EventKind.DELETE):
        target = envelope.uri or f"{envelope.instance}/{envelope.status_id}"
        return (target, envelope.kind.value, None)
    return None


def judge(expected: Iterable[Mapping[str, Any]], published: Iterable[Envelope]) -> Verdict:
    """Exactly once by (uri, kind, version), and per status in the order the simulator sent.

    `published` must be in Kafka order per partition (everything of one status shares one).
    """
    wanted: list[EventId] = [(e["uri"], e["kind"], e.get("version")) for e in expected]
    order: dict[str, list[EventId]] = defaultdict(list)
    for item in wanted:
        order[item[0]].append(item)
    seen: Counter[EventId] = Counter()
    arrival: dict[str, list[EventId]] = defaultdict(list)
    verdict = Verdict(expected=len(wanted))
    for envelope in published:
        if envelope.kind is EventKind.UNKNOWN:
            verdict.unknown_kept += 1
        if envelope.kind is EventKind.DELETE and not envelope.uri:
            verdict.unresolved_deletes += 1
            continue
        found = event_id(envelope)
        if found is None:
            continue
        verdict.found += 1
        seen[found] += 1
        arrival[found[0]].append(found)
    wanted_set = set(wanted)
    verdict.missing = [item for item in wanted if seen[item] == 0]
    verdict.duplicated = [item for item, n in seen.items() if n > 1]
    verdict.unexpected = [item for item in seen if item not in wanted_set]
    for uri, events in arrival.items():
        firsts = [e for e in dict.fromkeys(events) if e in wanted_set]
        sent = [e for e in order.get(uri, []) if e in set(firsts)]
        if sent != firsts:
            verdict.out_of_order.append(uri)
            verdict.order_examples.append((sent, firsts))
    return verdict


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class StreamerScenario:
    events: int = 3000
    rate: float = 150.0
    instances: int = 3
    drops: int = 20
    stalls: int = 5
    malformed_rounds: int = 3
    duplicates: int = 20
    kafka_outage_s: float = 60.0
    kills: int = 0  # kill -9 of the streamer, spread over the run
    seed: int = 11
    # Re-fetching statuses (here after a few seconds) is what finds a delete that a
    # killed streamer had received but not yet spooled: the status then answers 404.
    refresh_ages: str = "3"

    def fault_plan(self) -> str:
        return (
            f"drop={self.drops},stall={self.stalls},malformed={self.malformed_rounds},"
            f"duplicate={self.duplicates}"
        )


def run_streamer_scenario(
    scenario: StreamerScenario, workdir: Path, out: Callable[[str], None]
) -> Verdict:
    """Run the scenario on the local stack (Kafka is started if needed) and judge it."""
    stack = LocalStack(StackSettings())
    stack.up(["kafka"])
    kafka = KafkaSettings()
    ensure_topics(kafka)
    since_ms = int(time.time() * 1000) - 1000
    port = 18500 + os.getpid() % 100 * 3
    token = SimulatorSettings().token.get_secret_value()
    urls = [f"http://127.0.0.1:{port + i}" for i in range(scenario.instances)]
    transports = ("sse", "websocket")
    sources = ", ".join(f"{url}|public|{transports[i % 2]}" for i, url in enumerate(urls))
    streamer_env = {
        "FEDILAKE_STREAMER_SOURCES": sources,
        "FEDILAKE_STREAMER_ACCESS_TOKEN": token,
        "FEDILAKE_STREAMER_STALL_TIMEOUT_S": "2",
        "FEDILAKE_STREAMER_RECONNECT_MAX_S": "2",
        "FEDILAKE_STREAMER_BACKFILL_OVERLAP_S": "0",
        "FEDILAKE_STREAMER_REFRESH_AGES_S": scenario.refresh_ages,
    }
    out(
        f"scenario: {scenario.events} events at {scenario.rate:.0f}/s on {scenario.instances} "
        f"instances; faults {scenario.fault_plan()}; Kafka stopped for "
        f"{scenario.kafka_outage_s:.0f}s; {scenario.kills} kill -9 of the streamer"
    )
    with cli_processes(workdir) as start:
        start(
            "simulator",
            "simulate",
            env={
                "FEDILAKE_SIMULATOR_PORT": str(port),
                "FEDILAKE_SIMULATOR_INSTANCES": str(scenario.instances),
                "FEDILAKE_SIMULATOR_EVENTS": str(scenario.events),
                "FEDILAKE_SIMULATOR_RATE": str(scenario.rate),
                "FEDILAKE_SIMULATOR_SEED": str(scenario.seed),
                "FEDILAKE_SIMULATOR_FEDERATION_SHARE": "0.3",
                "FEDILAKE_SIMULATOR_EDIT_SHARE": "0.03",
                "FEDILAKE_SIMULATOR_DELETE_SHARE": "0.02",
                "FEDILAKE_SIMULATOR_REBLOG_SHARE": "0.05",
                "FEDILAKE_SIMULATOR_FAULTS": scenario.fault_plan(),
                "FEDILAKE_SIMULATOR_STALL_S": "5",
                "FEDILAKE_SIMULATOR_HEARTBEAT_S": "0.5",
                # Refreshes re-fetch every status; the default 300 per 5 minutes would
                # make a short run wait for its refreshes.
                "FEDILAKE_SIMULATOR_RATE_LIMIT": "1000000",
                # Statuses past the timeline cap answer 404 to a refresh, which the
                # streamer rightly takes for a delete: keep every status of the run.
                "FEDILAKE_SIMULATOR_TIMELINE_LIMIT": str(max(scenario.events, 20000)),
            },
        )
        _wait("the simulator", lambda: all(_ok(f"{u}/api/v1/streaming/health") for u in urls), 30)
        streamer = start("streamer", "stream", env=streamer_env)
        truth_url = f"{urls[0]}/api/v1/_fedilake/ground-truth"
        duration = scenario.events / scenario.rate
        began = time.monotonic()
        outage_at = began + duration * 0.25
        kill_times = [
            began + duration * (k + 1) / (scenario.kills + 1) for k in range(scenario.kills)
        ]
        outage_done = scenario.kafka_outage_s <= 0
        while True:
            now = time.monotonic()
            if not outage_done and now >= outage_at:
                out(f"  stopping Kafka for {scenario.kafka_outage_s:.0f}s")
                stack.down(["kafka"])
                time.sleep(scenario.kafka_outage_s)
                stack.up(["kafka"])
                out("  Kafka is back")
                outage_done = True
            if kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                children = child_pids(streamer.pid)
                # Every other kill takes the sender process down too (a crashed host or
                # container): the restarted sender must then find in Kafka what landed.
                everything = (scenario.kills - len(kill_times)) % 2 == 0
                victims = [streamer.pid, *children] if everything else [streamer.pid]
                out(
                    f"  kill -9 of {victims} (the streamer and {'its children' if everything else 'not its children'})"
                )
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                streamer.wait()
                # A sender left alive must notice and stop on its own, not linger.
                _wait_gone(children, 15)
                streamer = start("streamer", "stream", env=streamer_env)
            truth = _get(truth_url)
            if truth and truth["done"] and truth["pending"] == 0 and outage_done and not kill_times:
                break
            if now - began > duration * 3 + scenario.kafka_outage_s + 300:
                raise TimeoutError("the simulator did not finish; see the logs in " + str(workdir))
            time.sleep(0.5)
        out(f"  simulator done: {truth['sent']} events sent, {len(truth['expected'])} expected")
        verdict = _wait_for_verdict(kafka, since_ms, urls, truth, out)
        streamer.send_signal(signal.SIGTERM)
        try:
            streamer.wait(60)
        except subprocess.TimeoutExpired:
            streamer.kill()
    out(f"  {verdict.summary()}")
    for line in verdict.examples():
        out(f"    {line}")
    return verdict


def _wait_for_verdict(
    kafka: KafkaSettings,
    since_ms: int,
    urls: list[str],
    truth: dict[str, Any],
    out: Callable[[str], None],
    timeout_s: float = 300,
) -> Verdict:
    """Read Kafka until it holds everything expected (or nothing changes for a while)."""
    deadline = time.monotonic() + timeout_s
    wanted_letters = truth["malformed"] + truth["garbage"]
    while True:
        published = [
            envelope
            for record in read_since(kafka, Topics.EVENTS.name, since_ms)
            if (envelope := _envelope(record.value)) is not None and envelope.instance in urls
        ]
        verdict = judge(truth["expected"], published)
        verdict.dead_letters_expected = wanted_letters
        verdict.unknown_expected = truth["unknown"]
        verdict.dead_letters = sum(
            1
            for record in read_since(kafka, Topics.DEAD_LETTER.name, since_ms)
            if any(url.encode() in record.value[:4096] for url in urls)
        )
        if (not verdict.missing and verdict.dead_letters >= wanted_letters) or (
            time.monotonic() > deadline
        ):
            return verdict
        time.sleep(2)


def _envelope(value: bytes) -> Envelope | None:
    try:
        return Envelope.from_bytes(value)
    except EnvelopeError:
        return None


def _get(url: str) -> Any:
    try:
        response = requests.get(url, timeout=5)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError):
        return None


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.RequestException:
        return False


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    _wait(
        "the killed streamer's children to exit", lambda: not any(alive(p) for p in pids), timeout_s
    )
