"""Hadoop Streaming mappers and reducers: small stdin/stdout programs over the lake's JSON lines."""
