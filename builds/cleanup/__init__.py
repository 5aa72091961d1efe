"""Clean-up: of registries when builds are deleted (registry.py), of build hosts' disks (agent.py)."""
