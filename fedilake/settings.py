"""Settings of every fedilake service: one frozen class each, read from `FEDILAKE_*` variables.

All environment names live here. Settings are built in `main()` and passed in;
tests build them with explicit values or a custom environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore")


class StackSettings(BaseSettings):
    """The local stack of real services (`fedilake stack ...`)."""

    model_config = _config("FEDILAKE_STACK_")

    state_dir: Path = REPO_ROOT / ".fedilake"
    host: str = "localhost"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    namenode_port: int = 8020
    namenode_http_port: int = 9870
    datanode_port: int = 9866
    datanode_http_port: int = 9864
    datanode_ipc_port: int = 9867
    zookeeper_port: int = 2181
    hbase_master_port: int = 16000
    hbase_master_info_port: int = 16010
    hbase_regionserver_port: int = 16020
    hbase_regionserver_info_port: int = 16030
    thrift_port: int = 9090
    thrift_info_port: int = 9095
    kafka_heap: str = "512m"
    namenode_heap: str = "384m"
    datanode_heap: str = "256m"
    hbase_heap: str = "768m"
    thrift_heap: str = "256m"
    java_home: Path | None = None
    start_timeout_s: float = 180.0

    @property
    def lib_dir(self) -> Path:
        return self.state_dir / "lib"


class KafkaSettings(BaseSettings):
    model_config = _config("FEDILAKE_KAFKA_")

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "fedilake"


class HBaseSettings(BaseSettings):
    model_config = _config("FEDILAKE_HBASE_")

    host: str = "localhost"
    port: int = 9090
    table_prefix: str = ""
    salt_buckets: int = Field(
        default=0,
        ge=0,
        le=255,
        description="spread row keys over this many salts (0: unsalted, one prefix scan per bucket)",
    )


class HdfsSettings(BaseSettings):
    model_config = _config("FEDILAKE_HDFS_")

    webhdfs_url: str = "http://localhost:9870"
    user: str = "fedilake"
    namenode: str = "hdfs://localhost:8020"
    lake_root: str = "/fedilake"
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="longest wait for a WebHDFS connection or answer: a hung request fails "
        "and is retried instead of holding the sink (and its rebalances) forever",
    )


class SimulatorSettings(BaseSettings):
    """The local Mastodon-compatible server (`fedilake simulate`).

    `instances` simulated instances listen on `port`, `port + 1`, ... (each on a free
    port when `port` is 0). `events` counts every stream event emitted (new statuses,
    boosts, edits, deletes); faults and duplicates come on top. The shares are of
    emitted events and default to 0, as do the faults: the default run is one
    instance streaming new statuses only. `faults` is a plan for unattended runs,
    `drop=N,stall=N,malformed=N,duplicate=N`, each action spread evenly over `events`.
    """

    model_config = _config("FEDILAKE_SIMULATOR_")

    host: str = "127.0.0.1"
    port: int = 8765
    seed: int = 42
    rate: float = 50.0
    events: int | None = None
    heartbeat_s: float = 10.0
    token: SecretStr = SecretStr("fedilake-simulator-token")
    start: str | None = None
    spread_s: float = 0.0
    ground_truth_file: Path | None = None
    instances: int = Field(default=1, ge=1, le=64)
    federation_share: float = Field(
        default=0.0, ge=0, le=1, description="chance a status also reaches each other instance"
    )
    edit_share: float = Field(default=0.0, ge=0, lt=1, description="share of edit events")
    delete_share: float = Field(default=0.0, ge=0, lt=1, description="share of delete events")
    reblog_share: float = Field(default=0.0, ge=0, lt=1, description="share of boosts")
    faults: str | None = Field(default=None, description="e.g. drop=2,stall=1,malformed=3")
    stall_s: float = Field(default=15.0, gt=0, description="how long a planned stall lasts")
    rate_limit: int = Field(default=300, ge=1, description="REST requests per token per window")
    rate_limit_window_s: float = Field(default=300.0, gt=0)
    timeline_limit: int = Field(
        default=20000, ge=1, description="newest statuses each instance keeps for REST reads"
    )
    expected_limit: int = Field(
        default=200000, ge=0, description="events listed in the ground truth's `expected`"
    )


class StreamerSettings(BaseSettings):
    """The Mastodon listener (`fedilake stream`).

    Sources: one instance and stream (`instance_url`, `stream`, `transport`), or many
    through `sources` (`URL|STREAM|TRANSPORT, ...`) or a YAML `sources_file` that can
    give each instance its own token. Tokens come from `access_token` or
    `access_token_file` (the default for every instance) and are never printed.
    """

    model_config = _config("FEDILAKE_STREAMER_")

    instance_url: str = "http://127.0.0.1:8765"
    stream: str = "public"
    transport: str = "sse"
    sources: str | None = None
    sources_file: Path | None = None
    access_token: SecretStr | None = None
    access_token_file: Path | None = None
    state_dir: Path = REPO_ROOT / ".fedilake" / "streamer"
    reconnect_max_s: float = Field(default=30.0, gt=0)
    stall_timeout_s: float = Field(
        default=60.0, gt=0, description="no data and no heartbeat for this long: reconnect"
    )
    backfill_max_pages: int = Field(default=100, ge=0, description="0 disables gap backfill")
    backfill_page_size: int = Field(default=40, ge=1, le=40)
    backfill_overlap_s: float = Field(
        default=60.0, ge=0, description="re-read this much before a checkpoint (late federation)"
    )
    dedup_window_s: float = Field(default=48 * 3600.0, gt=0)
    edit_hold_s: float = Field(
        default=5.0,
        ge=0,
        description="an edit found by a backfill waits this long for the stream to bring "
        "the older edits first",
    )
    max_event_bytes: int = Field(default=1 << 20, gt=0)
    spool_max_bytes: int = Field(default=1 << 30, gt=0)
    spool_sync_interval_s: float = Field(default=0.05, gt=0)
    optout_policy: str = Field(
        default="anonymize", description="anonymize | drop | keep, for opted-out accounts"
    )
    refresh_ages_s: str = Field(
        default="3600,86400", description="re-fetch each status at these ages; empty disables"
    )
    refresh_share: float = Field(
        default=0.5, gt=0, le=1, description="at most this share of an instance's rate limit"
    )

    def refresh_ages(self) -> tuple[float, ...]:
        return tuple(sorted(float(a) for a in self.refresh_ages_s.split(",") if a.strip()))


class ProcessorSettings(BaseSettings):
    """The Faust worker (`fedilake process`)."""

    model_config = _config("FEDILAKE_PROCESSOR_")

    app_id: str = "fedilake-counters"
    source_topic: str = Field(
        default="fedilake.events",
        description="the envelope topic to count (a replay or test topic with the same partitions)",
    )
    flush_interval_s: float = Field(
        default=2.0, gt=0, description="the longest a counter change waits before HBase has it"
    )
    flush_min_interval_s: float = Field(
        default=0.5, gt=0, description="the shortest time between two flushes"
    )
    write_budget_cells_per_s: float = Field(
        default=4000.0,
        ge=0,
        description="HBase cells per second the flushes may average: under it a flush goes "
        "early (after flush_min_interval_s), over it changes gather for up to "
        "flush_interval_s so that a cell carries more events (0: every flush_interval_s)",
    )
    allowed_lateness_s: float = Field(
        default=26 * 3600.0,
        ge=0,
        description="how long after its end an hour or day window still takes changes "
        "(the default covers the streamer's 24 h engagement refresh)",
    )
    batch_events: int = Field(default=2000, gt=0, description="events taken per batch")
    fetch_bytes_per_partition: int = Field(
        default=1024 * 1024,
        gt=0,
        description="the most one Kafka fetch returns per partition (compressed bytes): nothing "
        "is fetched while a batch is counted, so an uncompressed topic of 2.5 KB statuses at "
        "5,000 events/s needs 8 MiB (and 80 MB more memory); the streamer's compressed batches need 1 MiB",
    )
    report_interval_s: float = Field(default=30.0, gt=0, description="how often to log counts")
    batch_within_s: float = Field(
        default=0.2, gt=0, description="longest wait to fill a batch before processing it"
    )
    status_retention_s: float | None = Field(
        default=None,
        gt=0,
        description="fold statuses this long behind the written watermark into all-time "
        "totals and delete their records, which bounds the worker's state and its restarts "
        "(at least a day plus allowed_lateness_s). Their later edits, deletes and refreshes "
        "then no longer reach the live all-time counters. Unset: records are kept for good",
    )
    session_timeout_s: float = Field(
        default=60.0,
        ge=6,
        le=90,
        description="a worker not heard from for this long leaves the group and its partitions "
        "go to the others (at least Kafka's group.min.session.timeout.ms, at most Faust's "
        "request timeout)",
    )
    data_dir: Path = REPO_ROOT / ".fedilake" / "faust"
    web_port: int = 6066

    @field_validator("status_retention_s", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _retention_outlives_windows(self) -> ProcessorSettings:
        # A folded status's day window must be closed: it could no longer change it.
        retention = self.status_retention_s
        if retention is not None and retention < 86400 + self.allowed_lateness_s:
            raise ValueError(
                f"FEDILAKE_PROCESSOR_STATUS_RETENTION_S ({retention:g} s) must be "
                "at least a day plus FEDILAKE_PROCESSOR_ALLOWED_LATENESS_S "
                f"({86400 + self.allowed_lateness_s:g} s)"
            )
        return self


class HdfsSinkSettings(BaseSettings):
    """The Kafka-to-HDFS lake writer (`fedilake sink hdfs`)."""

    model_config = _config("FEDILAKE_SINK_")

    group_id: str = "fedilake-hdfs-sink"
    flush_events: int = Field(default=5000, gt=0)
    flush_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    flush_interval_s: float = 5.0
    compact_interval_s: float = Field(default=60.0, description="0 disables compaction here")
    compact_target_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    close_grace_s: float = 600.0
    idle_after_s: float = 300.0
    fetch_bytes_per_partition: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="the most one Kafka fetch returns per partition (compressed bytes): "
        "with the client's default 1 MiB the sink waited on fetches (8 MiB: 9-14% faster "
        "here, up to 32 MiB more memory with four partitions)",
    )


class BatchSettings(BaseSettings):
    """The nightly Hadoop Streaming recomputation (`fedilake batch ...`)."""

    model_config = _config("FEDILAKE_BATCH_")

    python: str | None = None
    work_dir: Path = REPO_ROOT / ".fedilake" / "batch"
    heap: str = "512m"
