"""Settings of every fedilake service: one frozen class each, read from `FEDILAKE_*` variables.

All environment names live here. Settings are built in `main()` and passed in;
tests build them with explicit values or a custom environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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


class HdfsSettings(BaseSettings):
    model_config = _config("FEDILAKE_HDFS_")

    webhdfs_url: str = "http://localhost:9870"
    user: str = "fedilake"
    namenode: str = "hdfs://localhost:8020"
    lake_root: str = "/fedilake"


class SimulatorSettings(BaseSettings):
    """The local Mastodon-compatible server (`fedilake simulate`)."""

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


class StreamerSettings(BaseSettings):
    """The Mastodon listener (`fedilake stream`)."""

    model_config = _config("FEDILAKE_STREAMER_")

    instance_url: str = "http://127.0.0.1:8765"
    stream: str = "public"
    access_token: SecretStr | None = None
    access_token_file: Path | None = None
    reconnect_max_s: float = 30.0

    def token(self) -> str | None:
        if self.access_token is not None:
            return self.access_token.get_secret_value()
        if self.access_token_file is not None:
            return self.access_token_file.read_text().strip()
        return None


class ProcessorSettings(BaseSettings):
    """The Faust worker (`fedilake process`)."""

    model_config = _config("FEDILAKE_PROCESSOR_")

    app_id: str = "fedilake-counters"
    flush_interval_s: float = 1.0
    data_dir: Path = REPO_ROOT / ".fedilake" / "faust"
    web_port: int = 6066


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


class BatchSettings(BaseSettings):
    """The nightly Hadoop Streaming recomputation (`fedilake batch ...`)."""

    model_config = _config("FEDILAKE_BATCH_")

    python: str | None = None
    work_dir: Path = REPO_ROOT / ".fedilake" / "batch"
    heap: str = "512m"
