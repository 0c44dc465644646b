"""Speed layer (Faust agents) and batch layer (Hadoop Streaming jobs) over one set of metric definitions."""
