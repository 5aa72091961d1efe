"""The agent's Docker daemon (through the docker SDK) and per-build Docker client configs."""
