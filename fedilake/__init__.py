"""fedilake: fediverse ingestion into Kafka, HBase live counters and an HDFS lake."""
