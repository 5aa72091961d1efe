"""Free Disk Space on an agent, asked from the server: a job the agent runs next to its daemon.

The agent does the work (agent/cleanup.py: plan, removal, free space on its data volume); the
server keeps what the plan needs (AgentImage: the images builds made on the agent, with their
last use) and each run's record (AgentCleanup, shown on the agent's page with a chart).
"""

from django.conf import settings

from agent.cleanup import CleanupError, human, parse_size

from . import agent_services
from .models import Agent, AgentJob

AgentCleanupError = CleanupError

__all__ = ["AgentCleanupError", "free_disk_space_request", "human", "parse_size"]


def free_disk_space_request(agent: Agent, required: int, *, dry_run: bool = False, reason: str = "",
                            timeout: float | None = None) -> dict:
    """Asks the agent to free `required` bytes and waits; its answer: met, free_after, shortfall, text.

    Raises AgentCleanupError when the agent is not connected, does not answer in time, or cannot run it.
    """
    if not agent_services.agent_is_connected(agent):
        raise AgentCleanupError(_not_connected(agent))
    job = agent_services.job_create(agent=agent, kind=AgentJob.Kind.FREE_DISK_SPACE, payload={
        "required_bytes": required, "dry_run": dry_run, "reason": reason or "free_disk_space"})
    timeout = settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT if timeout is None else timeout
    done = agent_services.job_wait(job, timeout)
    if done is None:
        agent_services.job_withdraw(job)
        raise AgentCleanupError(f"agent {agent} did not answer within {timeout} s")
    if done.status == AgentJob.Status.FAILED:
        raise AgentCleanupError(done.error)
    return done.result


def _not_connected(agent: Agent) -> str:
    seen = f"last seen {agent.last_seen_at:%Y-%m-%d %H:%M:%S %Z}" if agent.last_seen_at else "never connected"
    return (f"agent {agent} is not connected ({seen}); start it on its build host with "
            "`python manage.py agent --server URL --token-file FILE`")
