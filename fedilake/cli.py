"""The `fedilake` command: the stack, the daemons, the batch job and queries, each a subcommand."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any

from fedilake.settings import (
    BatchSettings,
    HBaseSettings,
    HdfsSettings,
    HdfsSinkSettings,
    KafkaSettings,
    ProcessorSettings,
    SimulatorSettings,
    StackSettings,
    StreamerSettings,
)
from fedilake.stack.errors import StackError

log = logging.getLogger("fedilake")

QUIET_LOGGERS = (
    "kafka",
    "aiokafka",
    "urllib3",
    "faust",
    "mode",
    "hdfs",
    "happybase",
    "thriftpy2",
    "websocket",
)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR if name == "kafka" else logging.WARNING)


def out(text: str = "") -> None:
    """What a command prints for the person who ran it (results, not logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Interrupted(BaseException):
    """Raised out of a blocking read by SIGTERM/SIGINT, so a daemon stops promptly."""


def on_sigterm(stop: Callable[[], None], interrupt: bool = False) -> None:
    """Stop cleanly on SIGTERM/SIGINT; with `interrupt`, also break out of a blocking read."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop()
        if interrupt:
            raise Interrupted

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------- stack


def cmd_stack(args: argparse.Namespace) -> int:
    from fedilake.stack.control import LocalStack, tail

    stack = LocalStack(StackSettings())
    if args.action == "fetch":
        for lib in stack.fetch(args.services or None):
            out(f"{lib.name:9} jars in {lib}")
    elif args.action == "up":
        for status in stack.up(args.services or None):
            out(
                f"{status.name:9} up  pid {status.pid:<7} ports {_ports(status.ports):28} "
                f"{status.detail}"
            )
    elif args.action == "down":
        stopped = stack.down(args.services or None)
        out("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.action == "status":
        statuses = stack.status()
        out(f"{'SERVICE':9} {'STATE':9} {'PID':7} {'PORTS':28} DETAIL")
        for st in statuses:
            state = "healthy" if st.healthy else ("down" if st.pid is None else "unhealthy")
            out(f"{st.name:9} {state:9} {st.pid or '-'!s:7} {_ports(st.ports):28} {st.detail}")
        return 0 if all(st.healthy for st in statuses) else 3
    elif args.action == "logs":
        if len(args.services) != 1:
            raise StackError("`fedilake stack logs` takes exactly one SERVICE")
        out(tail(stack.log_path(args.services[0]), args.lines))
    elif args.action == "kill":
        for name in args.services:
            stack.kill(stack.service(name).name)
    return 0


def _ports(ports: Sequence[int]) -> str:
    return ",".join(str(p) for p in ports)


# ---------------------------------------------------------------------------- init


def cmd_init(args: argparse.Namespace) -> int:
    from fedilake.pipeline import initialize

    topics, tables = initialize(KafkaSettings(), HBaseSettings())
    out("Kafka topics: " + (", ".join(topics) + " created" if topics else "all present"))
    out("HBase tables: " + (", ".join(tables) + " created" if tables else "all present"))
    return 0


def cmd_hbase(args: argparse.Namespace) -> int:
    from fedilake.contracts import Tables
    from sinks.hbase import connect, init_tables

    connection = connect(HBaseSettings())
    try:
        created = init_tables(connection)
        for spec in Tables.all():
            state = "created" if spec.name in created else "present"
            families = ", ".join(
                f"{name}: " + " ".join(f"{k}={v}" for k, v in sorted(options.items()))
                for name, options in spec.families.items()
            )
            out(f"{spec.name}: {state} ({families})")
    finally:
        connection.close()
    return 0


# ---------------------------------------------------------------------------- daemons


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamer.simulator import run

    overrides = {
        k: v
        for k, v in {
            "port": args.port,
            "rate": args.rate,
            "events": args.events,
            "seed": args.seed,
            "start": args.start,
            "spread_s": args.spread,
            "ground_truth_file": args.ground_truth,
            "heartbeat_s": args.heartbeat,
            "instances": args.instances,
            "federation_share": args.federation_share,
            "edit_share": args.edit_share,
            "delete_share": args.delete_share,
            "reblog_share": args.reblog_share,
            "faults": args.faults,
            "stall_s": args.stall_s,
            "rate_limit": args.rate_limit,
            "rate_limit_window_s": args.rate_limit_window,
            "timeline_limit": args.timeline_limit,
        }.items()
        if v is not None
    }
    # The token comes from FEDILAKE_SIMULATOR_TOKEN only, never from the command line.
    run(SimulatorSettings(**overrides))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from streamer.daemon import Streamer
    from streamer.sources import configured_sources

    settings = StreamerSettings()
    if (
        settings.access_token is None
        and settings.access_token_file is None
        and not settings.sources_file
        and "127.0.0.1" in (settings.sources or settings.instance_url)
    ):
        # The embedded simulator's well-known token (not a secret): the default run needs none.
        settings = settings.model_copy(update={"access_token": SimulatorSettings().token})
    # A bad sources configuration is a ValueError: main() prints it without a traceback.
    streamer = Streamer(settings, KafkaSettings(), configured_sources(settings))
    on_sigterm(streamer.stop_requested.set)
    streamer.start()
    try:
        status = streamer.wait()
    finally:
        streamer.stop()
    return status


def cmd_process(args: argparse.Namespace) -> int:
    from processors.counters import build_app, prepare, run_worker

    settings, kafka = ProcessorSettings(), KafkaSettings()
    prepare(settings, kafka)
    app = build_app(settings, kafka, HBaseSettings())
    run_worker(app)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    import threading

    from fedilake.contracts import Topics
    from sinks.compactor import build_compactor, compact_periodically
    from sinks.lake import build_sink

    settings, hdfs = HdfsSinkSettings(), HdfsSettings()
    sink = build_sink(settings, KafkaSettings(), hdfs)
    on_sigterm(sink.stop)
    topics = [Topics.EVENTS.name]
    if settings.compact_interval_s > 0:
        threading.Thread(
            target=compact_periodically,
            args=(
                build_compactor(settings, hdfs),
                topics,
                settings.compact_interval_s,
                sink.stop_requested,
            ),
            name="compactor",
            daemon=True,
        ).start()
    sink.run(topics)
    return 0


def cmd_lake(args: argparse.Namespace) -> int:
    from fedilake.contracts import Topics
    from sinks.compactor import build_compactor
    from sinks.lake import webhdfs_client

    hdfs = HdfsSettings()
    compactor = build_compactor(HdfsSinkSettings(), hdfs)
    topic = args.topic or Topics.EVENTS.name
    if args.action == "ls":
        rows = compactor.summaries(topic)
        out(f"{'PARTITION':36} {'FILES':>5} {'BYTES':>12} {'EVENTS':>8} CLOSED")
        for row in rows:
            out(
                f"{topic}/dt={row.hour:%Y-%m-%d}/hr={row.hour:%H}".ljust(36)
                + f" {row.files:>5} {row.bytes:>12,} {row.events or 0:>8} "
                + ("yes" if row.closed else "no")
            )
        out(
            f"{len(rows)} hours, {sum(r.files for r in rows)} files, "
            f"{sum(r.events or 0 for r in rows)} events"
        )
    elif args.action == "close":
        if args.day is None:
            raise ValueError("`fedilake lake close` needs --day YYYY-MM-DD")
        closure = compactor.close_day(topic, args.day)
        if not closure.closed:
            log.error(
                "%s is not closed yet: watermark %s, hours still open: %s. An hour closes when "
                "every partition's events are past its end plus %ss, or the partition has "
                "been idle for %ss.",
                args.day,
                f"{closure.watermark:%Y-%m-%dT%H:%M}",
                ", ".join(f"{h:%H}" for h in closure.open_hours) or "none (the day is not over)",
                HdfsSinkSettings().close_grace_s,
                HdfsSinkSettings().idle_after_s,
            )
            return 3
        out(f"{args.day} is closed and compacted")
    elif args.action == "compact":
        for result in compactor.run(topic):
            out(
                f"{result.hour:%Y-%m-%dT%H}: {result.files_before} -> {result.files_after} files, "
                f"{result.events} events, {result.dropped} deleted statuses dropped"
            )
        out("compaction done")
    elif args.action == "retain":
        if args.days is None:
            raise ValueError("`fedilake lake retain` needs --days N")
        expired = compactor.expired_days(topic, args.days)
        # Tombstones last: a crash in between leaves tombstones, never statuses without theirs.
        tombstones = compactor.expired_tombstones(topic, args.days)
        client = webhdfs_client(hdfs)
        for path in expired + tombstones:
            if args.apply:
                client.delete(path, recursive=True)
            out(("deleted " if args.apply else "would delete ") + path)
        summary = (
            f"{len(expired)} day partitions older than {args.days} days and "
            f"{len(tombstones)} tombstone files only they needed"
        )
        out(f"deleted {summary}" if args.apply else f"dry run: {summary}; add --apply to delete")
    return 0


# ---------------------------------------------------------------------------- batch, query


def cmd_batch(args: argparse.Namespace) -> int:
    from processors.batch import HashtagRecount

    job = HashtagRecount(StackSettings(), HdfsSettings(), HBaseSettings(), BatchSettings())
    result = job.run(args.day)
    out(
        f"hashtags {result.day}: {result.rows} hourly rows from {result.input_files} lake files "
        f"in {result.seconds:.1f}s"
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from fedilake.contracts import Granularity, Metric, bucket_of, parse_hour
    from sinks.hbase import MetricStore, connect

    hour = parse_hour(args.hour)
    connection = connect(HBaseSettings())
    try:
        top = MetricStore(connection).top(
            Metric.HASHTAG, Granularity.HOUR, bucket_of(hour, Granularity.HOUR), args.limit
        )
    finally:
        connection.close()
    out(f"top hashtags of {hour:%Y-%m-%d %H}:00 UTC")
    out(f"{'#':>3} {'HASHTAG':32} {'LIVE':>8} {'BATCH':>8}")
    for rank, value in enumerate(top, 1):
        out(f"{rank:>3} {value.row.dimension:32} {_num(value.live):>8} {_num(value.batch):>8}")
    if not top:
        out("(no hashtags counted for that hour)")
    return 0


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_bench(args: argparse.Namespace) -> int:
    from fedilake.bench import run_lake_bench, run_skeleton_bench, run_streamer_bench

    if args.target == "streamer":
        return run_streamer_bench(args.events, out)
    if args.target == "lake":
        return run_lake_bench(args.events, out, hours=args.hours)
    if args.target == "speed":
        from fedilake.speed_bench import run_speed_bench

        return run_speed_bench(
            args.events, out, rate=args.rate, seconds=args.seconds, flush_interval_s=args.flush_s
        )
    if args.target == "fold":
        from fedilake.speed_bench import run_fold_bench

        return run_fold_bench(args.events, out, days=args.days, retention_h=args.retention_h)
    return run_skeleton_bench(args.events, out)


def cmd_scenario(args: argparse.Namespace) -> int:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="fedilake-scenario-"))
    if args.target == "lake":
        from fedilake.lake_scenario import LakeScenario, run_lake_scenario

        lake = LakeScenario(events=args.events, kills=10 if args.kills is None else args.kills)
        judged = run_lake_scenario(lake, workdir, out)
        out(judged.summary())
        out(f"logs in {workdir}")
        out("EXACT: every event once, in its hour" if judged.exact else "NOT EXACT")
        return 0 if judged.exact else 1

    from fedilake.scenarios import StreamerScenario, run_streamer_scenario

    scenario = StreamerScenario(
        events=args.events,
        rate=args.rate,
        kafka_outage_s=args.kafka_outage,
        kills=2 if args.kills is None else args.kills,
    )
    verdict = run_streamer_scenario(scenario, workdir, out)
    out(f"logs in {workdir}")
    out("EXACT: every event once, in order" if verdict.exact else "NOT EXACT")
    return 0 if verdict.exact else 1


def cmd_run(args: argparse.Namespace) -> int:
    from fedilake.pipeline import run_pipeline

    return run_pipeline(stop=args.stop)


# ---------------------------------------------------------------------------- parser


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"day must look like 2026-11-23, got {text!r}") from exc


def _unreachable_service(exc: BaseException) -> str | None:
    """A person-sized name for a connection failure to one of the services, else None."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError
    from requests import ConnectionError as HttpConnectionError
    from thriftpy2.transport import TTransportException

    if isinstance(exc, KafkaConnectionError) or (
        isinstance(exc, KafkaTimeoutError) and "bootstrap" in str(exc)
    ):
        return f"cannot reach Kafka at {KafkaSettings().bootstrap_servers}"
    if isinstance(exc, TTransportException):
        hbase = HBaseSettings()
        return f"cannot reach the HBase Thrift server at {hbase.host}:{hbase.port}"
    if isinstance(exc, HttpConnectionError):
        return "cannot reach an HTTP service (WebHDFS or the Mastodon instance)"
    if isinstance(exc, ConnectionError):
        return str(exc)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedilake",
        description="Fediverse ingestion: Mastodon streaming -> Kafka -> HBase counters + HDFS lake.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start the stack and every daemon on the embedded default")
    p.add_argument("--stop", action="store_true", help="stop the daemons and the stack instead")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stack", help="the local stack of real services")
    p.add_argument(
        "action",
        choices=["up", "down", "status", "logs", "kill", "fetch"],
        help="fetch: resolve the services' jars from Maven Central, starting nothing",
    )
    p.add_argument("services", nargs="*", help="kafka, namenode, datanode, hbase, thrift")
    p.add_argument("-n", "--lines", type=int, default=40, help="log lines to show (logs)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("init", help="create Kafka topics and HBase tables (idempotent)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("hbase", help="the HBase tables of the metrics")
    p.add_argument("action", choices=["init"], help="init: create the tables (idempotent)")
    p.set_defaults(func=cmd_hbase)

    p = sub.add_parser("simulate", help="a local Mastodon-compatible server with ground truth")
    p.add_argument("--port", type=int)
    p.add_argument("--rate", type=float, help="events per second")
    p.add_argument("--events", type=int, help="stop emitting after this many (default: forever)")
    p.add_argument("--seed", type=int)
    p.add_argument("--start", help="event time of the first status, e.g. 2026-11-20T10:00:00Z")
    p.add_argument("--spread", type=float, help="seconds of event time the statuses span")
    p.add_argument("--ground-truth", help="write the ground truth to this JSON file")
    p.add_argument("--heartbeat", type=float, help="seconds between SSE :thump / WebSocket pings")
    p.add_argument(
        "--instances", type=int, help="simulated instances, on --port, --port + 1, ... (default 1)"
    )
    p.add_argument(
        "--federation-share",
        type=float,
        help="chance a status also reaches each other instance, under its own id there (0-1)",
    )
    p.add_argument("--edit-share", type=float, help="share of events that edit a status (0-1)")
    p.add_argument("--delete-share", type=float, help="share of events that delete one (0-1)")
    p.add_argument("--reblog-share", type=float, help="share of new statuses that are boosts")
    p.add_argument(
        "--faults",
        help="faults spread over --events: drop=N,stall=N,malformed=N,duplicate=N "
        "(also at runtime: POST /api/v1/_fedilake/faults)",
    )
    p.add_argument("--stall-s", type=float, help="how long a planned stall lasts (default 15)")
    p.add_argument("--rate-limit", type=int, help="REST requests per token per window (300)")
    p.add_argument("--rate-limit-window", type=float, help="seconds of a rate-limit window (300)")
    p.add_argument(
        "--timeline-limit", type=int, help="newest statuses each instance keeps for REST reads"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("stream", help="listen to a Mastodon stream and publish to Kafka")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("process", help="the Faust worker keeping live counters in HBase")
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("sink", help="writers to storage")
    p.add_argument("target", choices=["hdfs"])
    p.set_defaults(func=cmd_sink)

    p = sub.add_parser("lake", help="the HDFS lake: list, compact closed hours, retention")
    p.add_argument("action", choices=["ls", "compact", "close", "retain"])
    p.add_argument("--day", type=_day, help="close: the UTC day that must be closed")
    p.add_argument("--topic", help="default: the events topic")
    p.add_argument("--days", type=int, help="retain: keep this many days")
    p.add_argument("--apply", action="store_true", help="retain: really delete (default: dry run)")
    p.set_defaults(func=cmd_lake)

    p = sub.add_parser("batch", help="recompute a day's metrics from the lake (Hadoop Streaming)")
    p.add_argument("metric", choices=["hashtags"])
    p.add_argument("--day", type=_day, required=True, help="UTC day, e.g. 2026-11-23")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("bench", help="measure events/s through the pipeline on the local stack")
    p.add_argument("target", choices=["skeleton", "streamer", "lake", "speed", "fold"])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument(
        "--rate", type=float, default=1000.0, help="speed: events/s of the freshness run"
    )
    p.add_argument("--seconds", type=float, default=30.0, help="speed: length of the freshness run")
    p.add_argument(
        "--flush-s",
        type=float,
        default=2.0,
        help="speed: the longest a counted change waits before the worker writes it to HBase",
    )
    p.add_argument("--hours", type=int, default=1, help="lake: event-time hours the events span")
    p.add_argument("--days", type=int, default=10, help="fold: event-time days the events span")
    p.add_argument(
        "--retention-h",
        type=float,
        default=50.0,
        help="fold: the status retention of the folding worker (at least 24 h + lateness)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "scenario",
        help="run a fault scenario on the local stack and judge it against the ground truth",
    )
    p.add_argument("target", choices=["streamer", "lake"])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument(
        "--rate", type=float, default=1000.0, help="streamer: simulated events per second"
    )
    p.add_argument(
        "--kafka-outage", type=float, default=60.0, help="streamer: seconds Kafka is stopped"
    )
    p.add_argument(
        "--kills",
        type=int,
        help="kill -9 of the streamer (default 2) or of the sink (default 10), spread out",
    )
    p.set_defaults(func=cmd_scenario)

    p = sub.add_parser("query", help="read the metrics from HBase")
    p.add_argument("report", choices=["top-hashtags"])
    p.add_argument("--hour", required=True, help="UTC hour, e.g. 2026-11-23T14")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except StackError as exc:
        log.error("%s", exc.describe())
        return 2
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:
        unreachable = _unreachable_service(exc)
        if unreachable is None:
            raise
        log.error("%s (%s). Is the stack up? Try `fedilake stack status`.", unreachable, exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
