"""Free Disk Space on an agent, asked from the server: a job the agent runs next to its daemon.

The agent does the work (agent/cleanup.py: plan, removal, free space on its data volume); the
server keeps what the plan needs (AgentImage: the images builds made on the agent, with their
last use, written by the ingestion) and each run's record (AgentCleanup, shown on the agent's page
with a chart).
"""

from django.conf import settings
from django.utils import timezone

from agent import protocol
from agent.cleanup import CleanupError, human, parse_size

from ..agents import services as agents
from ..agents.selectors import agent_is_connected
from ..models import Agent, AgentCleanup, AgentImage, AgentJob

AgentCleanupError = CleanupError

__all__ = ["AgentCleanupError", "agent_cleanup_record", "agent_images_tracked", "free_disk_space_request",
           "free_space_history", "human", "kept_items", "parse_size", "removed_items"]


def free_disk_space_request(agent: Agent, required: int, *, dry_run: bool = False, reason: str = "",
                            timeout: float | None = None) -> dict:
    """Asks the agent to free `required` bytes and waits; its answer: met, free_after, shortfall, text.

    Raises AgentCleanupError when the agent is not connected, does not answer in time, or cannot run it.
    """
    if not agent_is_connected(agent):
        raise AgentCleanupError(_not_connected(agent))
    job = agents.job_create(agent=agent, kind=AgentJob.Kind.FREE_DISK_SPACE, payload={
        "required_bytes": required, "dry_run": dry_run, "reason": reason or "free_disk_space"})
    timeout = settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT if timeout is None else timeout
    done = agents.job_wait(job, timeout)
    if done is None:
        agents.job_withdraw(job)
        raise AgentCleanupError(f"agent {agent} did not answer within {timeout} s")
    if done.status == AgentJob.Status.FAILED:
        raise AgentCleanupError(done.error or f"agent {agent} could not free disk space and did not say why")
    return done.result


def _not_connected(agent: Agent) -> str:
    seen = f"last seen {agent.last_seen_at:%Y-%m-%d %H:%M:%S %Z}" if agent.last_seen_at else "never connected"
    return (f"agent {agent} is not connected ({seen}); start it on its build host with "
            "`python manage.py agent --server URL --token-file FILE`")


def agent_images_tracked(agent: Agent) -> list[protocol.TrackedImage]:
    """Images builds created or pulled on the agent, with their last use: the candidates of its clean-up."""
    rows = AgentImage.objects.filter(agent=agent).order_by().values_list("reference", "last_used_at")
    return [protocol.TrackedImage(reference=reference, last_used_at=used) for reference, used in rows]


def agent_cleanup_record(*, agent: Agent, report: protocol.CleanupReport) -> AgentCleanup:
    """Keeps a run the agent reports, each removal with its reason, and what stayed and why (the items of
    `removed` marked "kept": the record has one list); the images it removed are no longer tracked."""
    removed = [_item(item) for item in report.removed]
    kept = [{**_item(item), "kept": True} for item in report.kept[:KEPT_RECORDED]]
    run = AgentCleanup.objects.create(
        agent=agent, at=timezone.now(), reason=report.reason[:300], data_path=report.data_path[:500],
        required_bytes=report.required_bytes, free_before=report.free_before, free_after=report.free_after,
        bytes_reclaimed=max(report.free_after - report.free_before, 0), removed=removed + kept, met=report.met,
    )
    gone = [ref for item in removed for ref in item["references"]]
    AgentImage.objects.filter(agent=agent, reference__in=gone).delete()
    return run


KEPT_RECORDED = 200  # what stayed is recorded up to this many images a run


def _item(item: dict) -> dict:
    """An item of a report as recorded: known keys only, texts cut to their sense (the agent is trusted
    with its own host, not with the server's database)."""
    references = [ref[:500] for ref in item.get("references") or [] if isinstance(ref, str)][:50]
    recorded = {"image": str(item.get("image") or "")[:100], "references": references,
                "reason": str(item.get("reason") or "")[:1000]}
    for key in ("size", "freed", "records"):
        if isinstance(item.get(key), int) and not isinstance(item.get(key), bool):
            recorded[key] = max(min(item[key], protocol.MAX_SIZE), 0)
    if item.get("kind") == "build cache":
        recorded["kind"] = "build cache"
    return recorded


def removed_items(run: AgentCleanup) -> list[dict]:
    """What the run removed (images, BuildKit's cache), each with its reason."""
    return [item for item in run.removed if not item.get("kept")]


def kept_items(run: AgentCleanup) -> list[dict]:
    """What the run left in place although it still needed space, each with why."""
    return [item for item in run.removed if item.get("kept")]


def free_space_history(agent: Agent, runs: int = 50) -> list[tuple]:
    """(time, free before, free after) of the agent's last `runs` clean-ups, oldest first."""
    return list(agent.cleanups.order_by("-at").values_list("at", "free_before", "free_after")[:runs])[::-1]
