"""Configuration files of the stack's services, rendered from the settings (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from fedilake.settings import StackSettings


def hadoop_xml(properties: Mapping[str, object]) -> str:
    rows = "\n".join(
        f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>"
        for name, value in properties.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>\n{rows}\n</configuration>\n'


def java_properties(properties: Mapping[str, object]) -> str:
    return "".join(f"{name}={value}\n" for name, value in properties.items())


def log4j_properties(level: str = "INFO") -> str:
    """Logs to stdout, which the stack redirects into the service's log file."""
    return java_properties(
        {
            "log4j.rootLogger": f"{level}, stdout",
            "log4j.appender.stdout": "org.apache.log4j.ConsoleAppender",
            "log4j.appender.stdout.layout": "org.apache.log4j.PatternLayout",
            "log4j.appender.stdout.layout.ConversionPattern": "%d{ISO8601} %-5p [%t] %c{1}: %m%n",
            "log4j.logger.org.apache.kafka": "INFO",
            "log4j.logger.org.apache.zookeeper": "WARN",
            "log4j.logger.org.apache.hadoop.hbase.zookeeper": "WARN",
            "log4j.logger.org.apache.hadoop.util.NativeCodeLoader": "ERROR",
            "log4j.logger.org.apache.hadoop.metrics2": "WARN",
        }
    )


def kafka_server_properties(s: StackSettings, data_dir: Path) -> str:
    return java_properties(
        {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},"
            f"CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": data_dir,
            "num.partitions": 4,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 4,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "log.retention.hours": 168,
            "num.network.threads": 2,
            "num.io.threads": 2,
        }
    )


def core_site(s: StackSettings, tmp_dir: Path) -> str:
    return hadoop_xml(
        {
            "fs.defaultFS": f"hdfs://{s.host}:{s.namenode_port}",
            "hadoop.tmp.dir": tmp_dir,
            "hadoop.http.staticuser.user": "fedilake",
        }
    )


def hdfs_site(s: StackSettings, name_dir: Path, data_dir: Path) -> str:
    return hadoop_xml(
        {
            "dfs.replication": 1,
            "dfs.namenode.name.dir": name_dir.as_uri(),
            "dfs.datanode.data.dir": data_dir.as_uri(),
            "dfs.namenode.rpc-address": f"{s.host}:{s.namenode_port}",
            "dfs.namenode.http-address": f"{s.host}:{s.namenode_http_port}",
            "dfs.datanode.address": f"{s.host}:{s.datanode_port}",
            "dfs.datanode.http.address": f"{s.host}:{s.datanode_http_port}",
            "dfs.datanode.ipc.address": f"{s.host}:{s.datanode_ipc_port}",
            # WebHDFS redirects writes to the DataNode by host name.
            "dfs.datanode.hostname": s.host,
            "dfs.client.use.datanode.hostname": "true",
            "dfs.namenode.datanode.registration.ip-hostname-check": "false",
            "dfs.webhdfs.enabled": "true",
            # One local user writes everything; HDFS permissions would only get in the way.
            "dfs.permissions.enabled": "false",
            "dfs.namenode.safemode.extension": 0,
            "dfs.namenode.safemode.min.datanodes": 0,
            "dfs.heartbeat.interval": 1,
            # Closing a file waits for the NameNode to hear of its last block from the
            # DataNode, which it usually has a few ms later; the first retry waits 400 ms by
            # default, so every small WebHDFS write (a lake part file, a manifest) took
            # 410 ms here. Retry after 20 ms instead, doubling, ten times (20 s in all).
            "dfs.client.block.write.locateFollowingBlock.initial.delay.ms": 20,
            "dfs.client.block.write.locateFollowingBlock.retries": 10,
            "dfs.namenode.heartbeat.recheck-interval": 10000,
        }
    )


def hbase_site(s: StackSettings, root_dir: Path, zk_dir: Path, tmp_dir: Path) -> str:
    return hadoop_xml(
        {
            "hbase.cluster.distributed": "false",
            "hbase.rootdir": root_dir.as_uri(),
            "hbase.tmp.dir": tmp_dir,
            "hbase.zookeeper.quorum": s.host,
            "hbase.zookeeper.property.clientPort": s.zookeeper_port,
            "hbase.zookeeper.property.dataDir": zk_dir,
            "hbase.master.port": s.hbase_master_port,
            "hbase.master.info.port": s.hbase_master_info_port,
            "hbase.regionserver.port": s.hbase_regionserver_port,
            "hbase.regionserver.info.port": s.hbase_regionserver_info_port,
            "hbase.master.hostname": s.host,
            "hbase.unsafe.regionserver.hostname": s.host,
            # The local filesystem has no hflush/hsync; standalone mode accepts that.
            "hbase.unsafe.stream.capability.enforce": "false",
            "hbase.regionserver.thrift.port": s.thrift_port,
            "hbase.thrift.info.port": s.thrift_info_port,
            "hbase.regionserver.handler.count": 10,
            "hbase.master.wait.on.regionservers.mintostart": 1,
        }
    )
