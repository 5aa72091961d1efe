"""Docker operations: the batches agents send, their ingestion, and the Docker Info of a build."""
