"""The stack's rendered configuration files and service specs (pure, nothing started)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fedilake.settings import StackSettings
from fedilake.stack import configs
from fedilake.stack.services import (
    JVM_OPENS,
    StackPaths,
    java_command,
    new_kafka_cluster_id,
    stack_services,
)


@pytest.fixture(autouse=True)
def _no_stack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEDILAKE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(
        state_dir=tmp_path,
        host="node1.test",
        kafka_port=19092,
        kafka_controller_port=19093,
        namenode_port=18020,
        namenode_http_port=19870,
        datanode_port=19866,
        datanode_http_port=19864,
        datanode_ipc_port=19867,
        zookeeper_port=12181,
        hbase_master_port=17000,
        hbase_master_info_port=17010,
        hbase_regionserver_port=17020,
        hbase_regionserver_info_port=17030,
        thrift_port=19090,
        thrift_info_port=19095,
        kafka_heap="300m",
    )


def _xml(text: str) -> dict[str, str]:
    root = ET.fromstring(text)
    assert root.tag == "configuration"
    return {prop.findtext("name", ""): prop.findtext("value", "") for prop in root.iter("property")}


def _properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_hadoop_xml_escapes_names_and_values() -> None:
    text = configs.hadoop_xml({"a<b&c": "x < y && z > 1", "n": 3})
    assert "&lt;" in text and "&amp;" in text
    assert _xml(text) == {"a<b&c": "x < y && z > 1", "n": "3"}


def test_java_properties_one_per_line() -> None:
    assert configs.java_properties({"a.b": 1, "c": "d=e"}) == "a.b=1\nc=d=e\n"


def test_log4j_properties_log_to_stdout_at_the_level() -> None:
    props = _properties(configs.log4j_properties("WARN"))
    assert props["log4j.rootLogger"] == "WARN, stdout"
    assert props["log4j.appender.stdout"] == "org.apache.log4j.ConsoleAppender"


def test_hdfs_site(settings: StackSettings, tmp_path: Path) -> None:
    site = _xml(configs.hdfs_site(settings, tmp_path / "name", tmp_path / "data"))
    assert site["dfs.datanode.hostname"] == "node1.test"
    assert site["dfs.client.use.datanode.hostname"] == "true"
    assert site["dfs.replication"] == "1"
    assert site["dfs.webhdfs.enabled"] == "true"
    assert site["dfs.namenode.rpc-address"] == "node1.test:18020"
    assert site["dfs.namenode.http-address"] == "node1.test:19870"
    assert site["dfs.datanode.address"] == "node1.test:19866"
    assert site["dfs.datanode.http.address"] == "node1.test:19864"
    assert site["dfs.datanode.ipc.address"] == "node1.test:19867"
    assert site["dfs.namenode.name.dir"] == (tmp_path / "name").as_uri()
    assert site["dfs.datanode.data.dir"] == (tmp_path / "data").as_uri()


def test_core_site(settings: StackSettings, tmp_path: Path) -> None:
    site = _xml(configs.core_site(settings, tmp_path / "tmp"))
    assert site["fs.defaultFS"] == "hdfs://node1.test:18020"
    assert site["hadoop.tmp.dir"] == str(tmp_path / "tmp")


def test_hbase_site(settings: StackSettings, tmp_path: Path) -> None:
    site = _xml(configs.hbase_site(settings, tmp_path / "hb", tmp_path / "zk", tmp_path / "t"))
    assert site["hbase.rootdir"] == (tmp_path / "hb").as_uri()
    assert site["hbase.zookeeper.property.clientPort"] == "12181"
    assert site["hbase.master.port"] == "17000"
    assert site["hbase.regionserver.thrift.port"] == "19090"
    assert site["hbase.cluster.distributed"] == "false"


def test_kafka_server_properties_are_kraft_on_the_configured_ports(
    settings: StackSettings, tmp_path: Path
) -> None:
    props = _properties(configs.kafka_server_properties(settings, tmp_path / "kafka"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@node1.test:19093"
    assert props["listeners"] == "PLAINTEXT://node1.test:19092,CONTROLLER://node1.test:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://node1.test:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "kafka")
    assert props["offsets.topic.replication.factor"] == "1"
    assert "zookeeper.connect" not in props


def test_stack_services_in_start_order_with_their_ports(settings: StackSettings) -> None:
    services = stack_services(settings)
    assert [s.name for s in services] == ["kafka", "namenode", "datanode", "hbase", "thrift"]
    ports = {s.name: s.ports for s in services}
    assert ports == {
        "kafka": (19092, 19093),
        "namenode": (18020, 19870),
        "datanode": (19866, 19864, 19867),
        "hbase": (12181, 17000, 17010, 17020, 17030),
        "thrift": (19090, 19095),
    }
    assert {s.name: s.component for s in services} == {
        "kafka": "kafka",
        "namenode": "hadoop",
        "datanode": "hadoop",
        "hbase": "hbase",
        "thrift": "hbase",
    }
    assert services[0].heap == "300m"


def test_stack_services_render_their_files_from_the_settings(
    settings: StackSettings, tmp_path: Path
) -> None:
    by_name = {s.name: s for s in stack_services(settings)}
    kafka = by_name["kafka"]
    assert kafka.args == (str(tmp_path / "conf" / "kafka" / "server.properties"),)
    assert _properties(kafka.conf_files["server.properties"])["log.dirs"] == str(
        tmp_path / "data" / "kafka"
    )
    assert kafka.health_url == "node1.test:19092"
    hdfs = _xml(by_name["namenode"].conf_files["hdfs-site.xml"])
    assert hdfs["dfs.namenode.name.dir"] == (tmp_path / "data" / "namenode").as_uri()
    assert by_name["datanode"].conf_files == by_name["namenode"].conf_files
    assert "hbase-site.xml" in by_name["thrift"].conf_files
    assert by_name["thrift"].args == ("-p", "19090", "--infoport", "19095", "start")
    assert by_name["namenode"].health_url == "http://node1.test:19870/webhdfs/v1/"


def test_stack_paths_live_under_the_state_dir(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    assert paths.lib == tmp_path / "lib"
    assert paths.conf("kafka") == tmp_path / "conf" / "kafka"
    assert paths.data("namenode") == tmp_path / "data" / "namenode"
    assert paths.log("hbase") == tmp_path / "logs" / "hbase.log"
    assert paths.pid("thrift") == tmp_path / "run" / "thrift.pid"


def test_java_command_caps_the_heap_and_opens_the_jdk() -> None:
    command = java_command(
        Path("/opt/jdk/bin/java"),
        ["/conf", "/lib/*"],
        "256m",
        "org.example.Main",
        ["a", "b"],
        {"log4j.configuration": "file:///conf/log4j.properties"},
        marker="-Dfedilake.service=kafka",
    )
    assert command[0] == "/opt/jdk/bin/java"
    assert command[1] == "-Dfedilake.service=kafka"
    assert "-Xmx256m" in command
    assert [arg for arg in command if arg.startswith("-Xmx")] == ["-Xmx256m"]
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in command
    assert "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED" in command
    assert all(flag in command for flag in JVM_OPENS)
    assert "-Dlog4j.configuration=file:///conf/log4j.properties" in command
    cp = command.index("-cp")
    assert command[cp + 1] == os.pathsep.join(["/conf", "/lib/*"])
    assert command[cp + 2 :] == ["org.example.Main", "a", "b"]
    # JVM options all come before the main class.
    assert all(arg.startswith("-") for arg in command[1:cp])


def test_java_command_without_a_marker() -> None:
    command = java_command(Path("java"), ["x"], "1g", "M", [], {})
    assert command[1] == "-Xmx1g"
    assert command[-3:] == ["-cp", "x", "M"]


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    # 0xF8 encodes to "-" first; the storage tool would read `-t -...` as an option and fail.
    draws = iter([b"\xf8" + bytes(15), b"\x01" + bytes(15)])
    cluster_id = new_kafka_cluster_id(lambda: next(draws))
    assert cluster_id == "AQAAAAAAAAAAAAAAAAAAAA"
    assert all(not new_kafka_cluster_id().startswith("-") for _ in range(2000))
