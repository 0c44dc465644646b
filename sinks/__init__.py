"""Writers to storage: the Kafka-to-HDFS lake sink and the HBase metric store."""
