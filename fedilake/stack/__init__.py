"""The local stack of real services (Kafka, HDFS, HBase and its Thrift server) run from Maven Central jars."""
