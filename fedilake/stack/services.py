"""The five services of the local stack: what each runs, where its files live, how it proves it is healthy."""

from __future__ import annotations

import base64
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fedilake.settings import StackSettings

from . import configs

JVM_OPENS = [
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang",
        "java.lang.reflect",
        "java.io",
        "java.net",
        "java.nio",
        "java.util",
        "java.util.concurrent",
        "java.util.concurrent.atomic",
        "java.util.regex",
        "sun.nio.ch",
        "sun.nio.cs",
        "sun.security.action",
        "sun.util.calendar",
        "jdk.internal.misc",
        "jdk.internal.ref",
    )
] + [
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true",
]

HDFS_WEBAPPS = ("hdfs", "datanode", "static", "secondary", "journal")


def java_command(
    java: Path,
    classpath: list[str],
    heap: str,
    main: str,
    args: Iterable[str],
    properties: Mapping[str, str],
    marker: str | None = None,
) -> list[str]:
    """A capped-heap JVM command line with the flags Hadoop, HBase and Kafka need on Java 17."""
    return [
        str(java),
        *([marker] if marker else []),
        f"-Xmx{heap}",
        "-Xms64m",
        "-XX:+UseSerialGC",
        "-XX:MaxMetaspaceSize=256m",
        *JVM_OPENS,
        "-Djava.net.preferIPv4Stack=true",
        "-Djava.awt.headless=true",
        *(f"-D{k}={v}" for k, v in properties.items()),
        "-cp",
        os.pathsep.join(classpath),
        main,
        *args,
    ]


@dataclass(frozen=True)
class StackPaths:
    """Everything the stack keeps, under one state directory."""

    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def conf(self, service: str) -> Path:
        return self.root / "conf" / service

    def data(self, name: str) -> Path:
        return self.root / "data" / name

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    component: str  # which deploy/<component>/pom.xml supplies its jars
    main_class: str
    args: tuple[str, ...]
    heap: str
    ports: tuple[int, ...]
    conf_files: dict[str, str]
    health: Callable[[], str]
    health_url: str
    extra_classpath: tuple[str, ...] = ()
    system_properties: dict[str, str] = field(default_factory=dict)


class Unhealthy(Exception):
    """A health probe got no good answer (yet)."""


def _get_json(url: str) -> dict[str, object]:
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException as exc:
        raise Unhealthy(f"no answer from {url}: {exc.__class__.__name__}") from exc
    if response.status_code != 200:
        raise Unhealthy(f"{url} answered HTTP {response.status_code}")
    body: dict[str, object] = response.json()
    return body


def _jmx_bean(base: str, query: str) -> dict[str, object]:
    beans = _get_json(f"{base}/jmx?qry={query}").get("beans")
    if not isinstance(beans, list) or not beans:
        raise Unhealthy(f"{base} has no JMX bean {query} yet")
    bean: dict[str, object] = beans[0]
    return bean


def kafka_health(bootstrap: str) -> str:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    # While Kafka starts, every probe is refused; kafka-python would log each at ERROR.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            topics = consumer.topics()
        finally:
            consumer.close()
    except KafkaError as exc:
        raise Unhealthy(f"Kafka metadata request failed: {exc}") from exc
    finally:
        kafka_log.setLevel(level)
    return f"metadata ok, {len(topics)} topics"


def namenode_health(http: str) -> str:
    _get_json(f"{http}/webhdfs/v1/?op=LISTSTATUS&user.name=fedilake")
    state = _jmx_bean(http, "Hadoop:service=NameNode,name=NameNodeStatus")
    return f"WebHDFS listing ok, state {state.get('State')}"


def datanode_health(namenode_http: str, datanode_http: str) -> str:
    _jmx_bean(datanode_http, "Hadoop:service=DataNode,name=DataNodeInfo")
    fs = _jmx_bean(namenode_http, "Hadoop:service=NameNode,name=FSNamesystemState")
    live = fs.get("NumLiveDataNodes", 0)
    if not isinstance(live, int) or live < 1:
        raise Unhealthy("DataNode is up but not yet registered with the NameNode")
    safe = _jmx_bean(namenode_http, "Hadoop:service=NameNode,name=NameNodeInfo").get("Safemode")
    if safe:
        raise Unhealthy(f"NameNode is in safe mode: {safe}")
    return f"{live} live DataNode(s)"


def hbase_health(master_http: str) -> str:
    server = _jmx_bean(master_http, "Hadoop:service=HBase,name=Master,sub=Server")
    if str(server.get("tag.isActiveMaster")).lower() != "true":
        raise Unhealthy("HBase master is not active yet")
    if int(str(server.get("numRegionServers", 0))) < 1:
        raise Unhealthy("HBase has no region server yet")
    return f"active master, {server.get('numRegionServers')} region server(s)"


def thrift_health(host: str, port: int) -> str:
    import happybase
    from thriftpy2.transport import TTransportException

    try:
        connection = happybase.Connection(host, port, timeout=10000, autoconnect=True)
        try:
            tables = connection.tables()
        finally:
            connection.close()
    except (TTransportException, OSError) as exc:
        raise Unhealthy(f"Thrift call failed: {exc}") from exc
    except Exception as exc:
        raise Unhealthy(f"Thrift call failed: {exc.__class__.__name__}: {exc}") from exc
    return f"Thrift tables() ok, {len(tables)} tables"


def new_kafka_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64, never starting with "-".

    The storage tool reads `-t -abc...` as an unknown option (one id in 64 starts with "-"), so,
    as Kafka's own `Uuid.randomUuid()` does, such ids are drawn again.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def stack_services(s: StackSettings) -> list[ServiceSpec]:
    """The stack's services in start order."""
    paths = StackPaths(s.state_dir)
    host = s.host
    nn_http = f"http://{host}:{s.namenode_http_port}"
    dn_http = f"http://{host}:{s.datanode_http_port}"
    master_http = f"http://{host}:{s.hbase_master_info_port}"
    log4j = {"log4j.properties": configs.log4j_properties()}
    hadoop_conf = {
        "core-site.xml": configs.core_site(s, paths.data("hadoop-tmp")),
        "hdfs-site.xml": configs.hdfs_site(s, paths.data("namenode"), paths.data("datanode")),
        **log4j,
    }
    hbase_conf = {
        "hbase-site.xml": configs.hbase_site(
            s, paths.data("hbase"), paths.data("zookeeper"), paths.data("hbase-tmp")
        ),
        **log4j,
    }
    return [
        ServiceSpec(
            name="kafka",
            component="kafka",
            main_class="kafka.Kafka",
            args=(str(paths.conf("kafka") / "server.properties"),),
            heap=s.kafka_heap,
            ports=(s.kafka_port, s.kafka_controller_port),
            conf_files={
                "server.properties": configs.kafka_server_properties(s, paths.data("kafka")),
                **log4j,
            },
            health=lambda: kafka_health(f"{host}:{s.kafka_port}"),
            health_url=f"{host}:{s.kafka_port}",
            system_properties={
                "log4j.configuration": (paths.conf("kafka") / "log4j.properties").as_uri()
            },
        ),
        ServiceSpec(
            name="namenode",
            component="hadoop",
            main_class="org.apache.hadoop.hdfs.server.namenode.NameNode",
            args=(),
            heap=s.namenode_heap,
            ports=(s.namenode_port, s.namenode_http_port),
            conf_files=hadoop_conf,
            health=lambda: namenode_health(nn_http),
            health_url=f"{nn_http}/webhdfs/v1/",
        ),
        ServiceSpec(
            name="datanode",
            component="hadoop",
            main_class="org.apache.hadoop.hdfs.server.datanode.DataNode",
            args=(),
            heap=s.datanode_heap,
            ports=(s.datanode_port, s.datanode_http_port, s.datanode_ipc_port),
            conf_files=hadoop_conf,
            health=lambda: datanode_health(nn_http, dn_http),
            health_url=dn_http,
        ),
        ServiceSpec(
            name="hbase",
            component="hbase",
            main_class="org.apache.hadoop.hbase.master.HMaster",
            args=("start",),
            heap=s.hbase_heap,
            ports=(
                s.zookeeper_port,
                s.hbase_master_port,
                s.hbase_master_info_port,
                s.hbase_regionserver_port,
                s.hbase_regionserver_info_port,
            ),
            conf_files=hbase_conf,
            health=lambda: hbase_health(master_http),
            health_url=master_http,
        ),
        ServiceSpec(
            name="thrift",
            component="hbase",
            main_class="org.apache.hadoop.hbase.thrift.ThriftServer",
            args=("-p", str(s.thrift_port), "--infoport", str(s.thrift_info_port), "start"),
            heap=s.thrift_heap,
            ports=(s.thrift_port, s.thrift_info_port),
            conf_files=hbase_conf,
            health=lambda: thrift_health(host, s.thrift_port),
            health_url=f"thrift://{host}:{s.thrift_port}",
        ),
    ]
