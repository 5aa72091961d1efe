"""Pushes a build reports itself (report_push): images its Docker daemon never saw pushed."""
