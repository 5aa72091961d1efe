"""Build configurations with the Docker Support feature, agents, builds and what builds did."""

import json
from hashlib import sha256

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from connections.models import Connection, Project
from connections.validators import validate_ident

_AT_LEAST_ONE = MinValueValidator(1, message="must be at least 1; leave it empty to not use this rule")


class BuildConfiguration(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="build_configurations")
    ident = models.CharField(
        "id", max_length=64, unique=True, validators=[validate_ident],
        help_text="Stable identifier: `run_build CONFIG`, the API and the settings file use it.",
    )
    name = models.CharField(max_length=200)
    login_connections = models.ManyToManyField(
        Connection, through="LoginConnection", related_name="build_configurations", blank=True,
    )
    cleanup_pushed_images = models.BooleanField(
        "clean up pushed images", default=False,
        help_text="Delete the images a build pushed from their registry when the build is cleaned up.",
    )
    keep_last = models.PositiveIntegerField(
        "keep last N builds", null=True, blank=True, validators=[_AT_LEAST_ONE],
    )
    keep_days = models.PositiveIntegerField(
        "keep builds younger than D days", null=True, blank=True, validators=[_AT_LEAST_ONE],
        help_text="A build is kept while either rule keeps it. With neither rule, builds are kept.",
    )
    protected_tags = models.CharField(
        max_length=1000, blank=True,
        help_text="Tag patterns clean-up never deletes nor lets go by deleting their digest, e.g. `latest v* "
                  "release-*` (shell-style, separated by spaces or commas), besides DOCKERSUPPORT_PROTECTED_TAGS.",
    )
    exact_attribution = models.BooleanField(
        "exact attribution", default=True,
        help_text="Each build gets its own Docker endpoint (DOCKER_HOST, a socket the agent forwards to the daemon), "
                  "so its Docker operations are known from its own requests, even when builds share a daemon. Turn "
                  "off only for builds that must talk to the daemon's own socket (they then fall back to time-based "
                  "attribution: pushes while other builds ran are 'owner uncertain' and not cleaned up).",
    )

    class Meta:
        ordering = ["ident"]

    def __str__(self):
        return self.name if self.name == self.ident else f"{self.name} ({self.ident})"

    # Set by a writer that gives the configuration a new login list in the same change (the settings
    # file, which checks the new list against the new project): a move then keeps no old login.
    logins_replaced = False

    def clean(self):
        # Moved to another project: its login list must stay within the new project's tree.
        if self.pk is None or self.project_id is None or self.logins_replaced:
            return
        stored = type(self).objects.filter(pk=self.pk).values_list("project_id", flat=True).first()
        if stored is None or stored == self.project_id:
            return
        allowed = {p.pk for p in self.project.lineage()}
        outside = [login.connection for login in self.logins.select_related("connection__project")
                   if login.connection.project_id not in allowed]
        if outside:
            names = ", ".join(f"'{c.ident}' of project '{c.project.ident}'" for c in outside)
            raise ValidationError({"project": (
                f"configuration '{self.ident}' logs in with connection {names}, which would not be "
                f"'{self.project.ident}' or one of its ancestors; remove those logins first")})


class LoginConnection(models.Model):
    """A registry that builds of a configuration log in to before they run."""

    configuration = models.ForeignKey(BuildConfiguration, on_delete=models.CASCADE, related_name="logins")
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="logins")
    optional = models.BooleanField(
        default=False, help_text="A failed login only warns instead of failing the build.",
    )
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["configuration", "connection"], name="login_connection_once"),
        ]

    def __str__(self):
        return f"{self.configuration.ident} → {self.connection}"

    def clean(self):
        try:
            # In the admin's add form the configuration is not saved yet: use the object, not its id.
            configuration, connection = self.configuration, self.connection
        except ObjectDoesNotExist:
            return
        if configuration.project_id is None:
            return
        lineage = configuration.project.lineage()
        if connection.project_id not in {p.pk for p in lineage}:
            raise ValidationError({
                "connection": (
                    f"connection '{connection}' belongs to project '{connection.project.ident}', "
                    f"which is neither '{configuration.project.ident}' nor one of its ancestors"
                )
            })

    def save(self, *args, **kwargs):
        # Another project's credentials must never reach a build, whatever path writes the row.
        self.full_clean(validate_unique=False, validate_constraints=False)
        super().save(*args, **kwargs)


class Agent(models.Model):
    class OS(models.TextChoices):
        LINUX = "linux", "Linux"
        WINDOWS = "windows", "Windows"
        MACOS = "macos", "macOS"
        OTHER = "other", "Other"

    name = models.CharField(
        max_length=64, unique=True, validators=[validate_ident],
        help_text="Run it on the build host with `manage.py agent --server URL --token-file FILE`.",
    )
    os = models.CharField("operating system", max_length=10, choices=OS.choices, default="linux")
    projects = models.ManyToManyField(
        Project, blank=True, related_name="agents",
        help_text="The projects whose builds it runs (and their subprojects). None: a shared agent that runs "
                  "every project's builds.",
    )
    shared = models.BooleanField(
        default=True, editable=False,
        help_text="Serves every project. Set when its projects are given: none makes it shared.",
    )
    docker_host = models.CharField(
        "Docker endpoint", max_length=255, blank=True,
        help_text="e.g. unix:///var/run/docker.sock or tcp://host:2376; the agent's own DOCKER_HOST wins.",
    )
    keep_patterns = models.TextField(
        blank=True, help_text="Images whose reference matches one of these regular expressions (one per line) "
                              "are never removed by Free Disk Space on this agent.",
    )
    min_image_age = models.PositiveIntegerField(
        "minimum image age", default=600,
        help_text="Seconds: Free Disk Space leaves images younger than this (a running build may use them).",
    )
    keep_free_bytes = models.BigIntegerField(
        "keep free", null=True, blank=True, validators=[MinValueValidator(1, message="must be at least 1 byte")],
        help_text="Bytes the agent keeps free on its own between builds (Free Disk Space runs when there is "
                  "less); empty: only when a build or an admin asks.",
    )
    docker_data_path = models.CharField(
        "Docker data path", max_length=500, blank=True,
        help_text="Where its daemon keeps its data; empty: DOCKERSUPPORT_DOCKER_DATA_PATH on the build host, "
                  "else /var/lib/docker (Linux), %ProgramData% (Windows), $HOME (others).",
    )
    # The agent's own token, hashed: `manage.py agent_token NAME` prints it once. Empty: revoked.
    token_hash = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    token_created_at = models.DateTimeField(null=True, blank=True, editable=False)
    # What the agent last said of itself.
    last_seen_at = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    # Counts the agent's (re)starts: a job poll of an earlier run, still waiting on the server, takes nothing.
    session = models.PositiveIntegerField(default=0, editable=False)
    hostname = models.CharField(max_length=255, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    daemon_ok = models.BooleanField(null=True, blank=True)
    daemon_error = models.TextField(blank=True)
    daemon_version = models.CharField(max_length=64, blank=True)
    reported_docker_host = models.CharField(max_length=255, blank=True)
    free_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        from agent.cleanup import CleanupError, keep_patterns_parse

        try:
            keep_patterns_parse(self.keep_patterns)  # the agent refuses to clean up with a pattern it cannot use
        except CleanupError as exc:
            raise ValidationError({"keep_patterns": str(exc).removeprefix("keep patterns: ")}) from None

    def serves(self, project: Project) -> bool:
        """A shared agent serves every project; else its projects and their subprojects (none, once its
        projects were all deleted: it never becomes shared by itself)."""
        if self.shared:
            return True
        assigned = set(self.projects.values_list("pk", flat=True))
        return any(p.pk in assigned for p in project.lineage())

    def projects_assign(self, projects, *, shared: bool | None = None) -> None:
        """Its projects, as a person gives them (admin, settings file): none makes it shared unless
        `shared=False` says it serves none."""
        projects = list(projects)
        self.projects.set(projects)
        self.shared = not projects if shared is None else shared and not projects
        type(self).objects.filter(pk=self.pk).update(shared=self.shared)


class Build(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error (did not run)"
        LOST = "lost", "Lost (ended without finishing)"

    configuration = models.ForeignKey(BuildConfiguration, on_delete=models.CASCADE, related_name="builds")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="builds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING, db_index=True)
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    pinned = models.BooleanField(default=False, help_text="Pinned builds are never deleted by retention.")
    docker_config = models.CharField(
        "DOCKER_CONFIG directory", max_length=500, blank=True,
        help_text="The build's private Docker client config; removed at logout.",
    )
    class StartedBy(models.TextChoices):
        RUN_BUILD = "run_build", "run_build command"
        API = "api", "REST API"

    started_by = models.CharField(max_length=10, choices=StartedBy.choices, default=StartedBy.RUN_BUILD)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    login_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the first expiring registry token (ECR) of the build expires.",
    )
    logged_out_at = models.DateTimeField(null=True, blank=True)
    logged_in_registries = models.JSONField(
        default=list, blank=True,
        help_text="Registry hosts the build was logged in to (pulls from others were anonymous).",
    )
    warnings = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)

    class Attribution(models.TextChoices):
        EXACT = "exact", "exact (its own Docker endpoint)"
        TIME = "time", "time-based"

    attribution = models.CharField(
        max_length=8, blank=True, choices=Attribution.choices,
        help_text="How its agent told its Docker operations from other builds': from its own Docker endpoint's "
                  "requests (exact), or by time (operations while it ran); empty: not reported (an older agent).",
    )
    attribution_note = models.CharField(max_length=500, blank=True,
                                        help_text="Why its attribution is time-based, as its agent said.")
    # The build's own token, hashed: it authorizes the agent's requests for this build only, while it runs.
    token_hash = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    # The token its command gets (DOCKERSUPPORT_BUILD_TOKEN), hashed: it reports the build's pushes the daemon
    # never saw (report_push), for this build only, while it runs; nothing else (builds/reported/).
    report_token_hash = models.CharField(max_length=64, blank=True, db_index=True, editable=False)

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["configuration", "number"], name="build_number_unique_in_configuration"),
        ]
        indexes = [models.Index(fields=["agent", "status"])]

    def __str__(self):
        return f"{self.configuration.ident} #{self.number}"

    @property
    def is_running(self) -> bool:
        return self.status == self.Status.RUNNING


class DockerEvent(models.Model):
    """What the daemon said of one event, as an operation of a build and as one no build asked for keep it."""

    time = models.DateTimeField()
    time_nano = models.BigIntegerField(help_text="The daemon's event time in nanoseconds since the epoch.")
    event_type = models.CharField(max_length=20)
    raw_action = models.CharField(max_length=100, help_text="The daemon's own action name.")
    image = models.CharField(max_length=500, blank=True)
    tag = models.CharField(max_length=128, blank=True)
    digest = models.CharField(max_length=100, blank=True)
    container_id = models.CharField(max_length=64, blank=True)
    container_name = models.CharField(max_length=255, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    class Meta:
        abstract = True


class DockerOperation(DockerEvent):
    """One event of the agent's Docker daemon during a build."""

    class Action(models.TextChoices):
        PULL = "pull"
        PUSH = "push"
        TAG = "tag"
        UNTAG = "untag"
        DELETE = "delete"
        BUILD = "build"
        IMPORT = "import"
        LOAD = "load"
        CREATE = "create"
        START = "start"
        EXEC = "exec"
        DIE = "die"
        DESTROY = "destroy"

    # No single-column indexes: the composite ones below serve every query, and each index costs
    # ingestion time (benchmarks/event_ingestion.py).
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="operations", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="operations", db_index=False)
    action = models.CharField(max_length=10, choices=Action.choices)
    actor_id = models.CharField(max_length=255)
    attributes = models.JSONField(default=dict, blank=True)
    # A push the build reported itself (report_push) rather than one its daemon's events told. A database default
    # too: ingestion's bulk INSERT does not name the column.
    reported = models.BooleanField(default=False, db_default=False)
    identity = models.CharField(
        max_length=64, editable=False,
        help_text="SHA-256 of the event's stored fields and attributes (operation_identity): the same event "
                  "sent again has the same one; two events of one clock tick (two tags of an image) do not.",
    )

    class Meta:
        ordering = ["time_nano", "pk"]
        constraints = [
            # The daemon replays events after a reconnect and agents resend unacknowledged batches: this
            # key makes both harmless. The build is part of it: builds that overlap on one daemon each
            # get their own row of an event.
            models.UniqueConstraint(fields=["build", "identity"], name="docker_operation_identity_once_per_build"),
        ]
        indexes = [
            models.Index(fields=["build", "time_nano"]),  # the Docker Info tab's pages
            models.Index(fields=["build", "action", "time_nano"]),  # its filter and the summary
        ]

    def __str__(self):
        return f"{self.action} {self.image or self.container_name or self.actor_id}"

    def save(self, *args, **kwargs):
        # Ingestion computes it for its bulk rows; a row saved alone (the shell, a fixture) gets it here.
        if not self.identity:
            self.identity = operation_identity({name: getattr(self, name) for name in IDENTITY_FIELDS})
        super().save(*args, **kwargs)


# An operation's identity (DockerOperation.identity): what makes two events the same event.
PULLED_IMAGE_ID = "image_id"  # the attribute where the agent puts a pulled image's ID (not part of its identity)
IDENTITY_FIELDS = ("time_nano", "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest",
                   "container_id", "container_name", "exit_code", "attributes")

# ASCII only: NUL and lone surrogates show as escapes, which `operation_fields` looks for.
canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def operation_identity(row: dict) -> str:
    """SHA-256 (hex) of the operation's stored fields and attributes, as canonical JSON.

    The same event delivered again (a replay, a batch sent again) has the same identity; distinct
    events never share one, even in one clock tick. A push's digest, and a pull's digest and image ID,
    are left out: the agent asks the daemon for them afterwards, and an event replayed once the image
    is gone comes without them.
    Computed over the stored values (secrets masked), so that it gives no secret away.
    """
    values = [row[name] for name in IDENTITY_FIELDS]
    if row["action"] == DockerOperation.Action.PUSH:
        values[IDENTITY_FIELDS.index("digest")] = ""
    elif row["action"] == DockerOperation.Action.PULL:
        # A pull's digest (unless pulled by digest) and image ID are asked of the daemon afterwards too.
        if "@" not in row["actor_id"]:
            values[IDENTITY_FIELDS.index("digest")] = ""
        attributes = row["attributes"]
        if isinstance(attributes, dict) and PULLED_IMAGE_ID in attributes:
            values[IDENTITY_FIELDS.index("attributes")] = {k: v for k, v in attributes.items() if k != PULLED_IMAGE_ID}
    return sha256(canonical_json(values).encode()).hexdigest()


class UnattributedOperation(DockerEvent):
    """An event of an agent's daemon that no build's own Docker endpoint asked for while builds ran: something
    on the build host used the daemon directly. Kept on the agent, never given to a build by guess; only the
    newest UNATTRIBUTED_KEPT of an agent stay."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="unattributed_operations",
                              db_index=False)
    action = models.CharField(max_length=10, choices=DockerOperation.Action.choices)
    identity = models.CharField(max_length=64, editable=False,
                                help_text="The event's identity, as a DockerOperation's: sent again, it is the same.")

    class Meta:
        ordering = ["-time_nano", "-pk"]
        verbose_name = "Docker operation no build asked for"
        verbose_name_plural = "Docker operations no build asked for"
        constraints = [
            models.UniqueConstraint(fields=["agent", "identity"], name="unattributed_operation_identity_once"),
        ]
        indexes = [models.Index(fields=["agent", "time_nano"])]  # the agent's page, and pruning

    def __str__(self):
        return f"{self.action} {self.image or self.container_name or self.container_id} on agent {self.agent_id}"


UNATTRIBUTED_KEPT = 1000  # an agent's newest Docker operations no build asked for that are kept


class SetAsideRecord(models.Model):
    """An event record of an agent's batch that could not be stored (or not wholly): kept with the error,
    without secrets, for an admin to see; the rest of its batch was stored."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="set_aside_records")
    first_seq = models.BigIntegerField(help_text="The first sequence number of the batch it came in.")
    record = models.JSONField(null=True, blank=True,
                              help_text="The record as the agent sent it, without the builds' secrets.")
    error = models.TextField(help_text="Why it was not stored (the database's answer), without secrets.")
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-pk"]
        verbose_name = "set-aside event record"
        indexes = [models.Index(fields=["agent", "first_seq"])]

    def __str__(self):
        return f"record of batch {self.first_seq} of {self.agent}, set aside at {self.at:%Y-%m-%d %H:%M}"


class PushedImage(models.Model):
    """An image a build pushed; outlives the build (a tombstone) until its registry deletion is done."""

    class CleanupStatus(models.TextChoices):
        KEPT = "kept", "Kept"
        PENDING = "pending", "Pending deletion"
        DELETED = "deleted", "Deleted"
        FAILED = "failed", "Deletion failed"

    build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="pushed_images")
    # Copied from the build so that the tombstone still knows where to look for credentials.
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="pushed_images")
    configuration_ident = models.CharField(max_length=64)
    build_number = models.PositiveIntegerField()
    registry = models.CharField(max_length=255)
    repository = models.CharField(max_length=255)
    tag = models.CharField(max_length=128, blank=True)
    digest = models.CharField(max_length=100, blank=True)
    pushed_at = models.DateTimeField()
    # The connection the build logged in with for this registry: deletion tries it first.
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    owner_uncertain = models.BooleanField(
        default=False, help_text="Pushed while other builds ran on the same daemon: which one pushed it is not "
                                 "known, so it is never deleted automatically until an admin settles its owner.",
    )
    owner_note = models.CharField(max_length=500, blank=True,
                                  help_text="Why its owner is uncertain, or who settled it and when.")
    reported = models.BooleanField(
        default=False, help_text="Reported by its build (report_push: a push its Docker daemon never saw), not read "
                                 "from the daemon's events.",
    )
    verified_at = models.DateTimeField(
        null=True, blank=True,
        help_text="A reported push: when the registry was seen holding its digest, during its build, with its "
                  "build's login connection (`connection`). Clean-up deletes a reported push only when set.",
    )
    cleanup_status = models.CharField(
        max_length=10, choices=CleanupStatus.choices, default=CleanupStatus.KEPT, db_index=True,
    )
    cleanup_reason = models.TextField(blank=True, help_text="Why it was kept, or the registry's last error.")
    cleanup_attempts = models.PositiveIntegerField(default=0)
    cleanup_updated_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a pending deletion is tried next.")
    # A deletion run claims rows with a conditional UPDATE before touching the registry, so two
    # runs never delete the same image twice; the claim lapses if its run dies.
    claim = models.CharField(max_length=36, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pushed_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["build", "registry", "repository", "tag", "digest"], name="pushed_image_once",
            ),
        ]
        indexes = [models.Index(fields=["registry", "repository", "digest"])]

    def __str__(self):
        return self.reference

    @property
    def reference(self) -> str:
        """`registry/repository@digest`, or with the tag while the digest is unknown."""
        if self.digest:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return f"{self.registry}/{self.repository}:{self.tag}"


class CleanupRun(models.Model):
    """One server clean-up: retention applied, builds deleted, pushed images deleted, kept or failed."""

    class Trigger(models.TextChoices):
        COMMAND = "command", "cleanup_builds command"
        SCHEDULE = "schedule", "Schedule (Celery beat)"
        RETRY = "retry", "Retry of pending deletions"
        ADMIN = "admin", "Admin action"

    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    builds_deleted = models.PositiveIntegerField(default=0)
    images_deleted = models.PositiveIntegerField(default=0)
    images_kept = models.PositiveIntegerField(default=0)
    images_failed = models.PositiveIntegerField(default=0)
    images_retrying = models.PositiveIntegerField(default=0)
    details = models.JSONField(default=list, blank=True,
                               help_text="Each build deleted and each image's outcome, with reasons.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self):
        return f"clean-up {self.started_at:%Y-%m-%d %H:%M}"


class AgentImage(models.Model):
    """An image that a build on the agent created or pulled, with its last use by a build (for agent clean-up)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="images")
    reference = models.CharField(max_length=500, help_text="repository:tag, or the image ID when it has no tag.")
    image_id = models.CharField(max_length=100, blank=True)
    created_by = models.CharField(max_length=10,
                                  help_text="The operation that brought it: pull, build, import, load, tag.")
    first_seen_at = models.DateTimeField()
    last_used_at = models.DateTimeField(db_index=True)
    last_build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["agent", "last_used_at"]
        constraints = [models.UniqueConstraint(fields=["agent", "reference"], name="agent_image_once")]

    def __str__(self):
        return f"{self.reference} on {self.agent}"


class AgentCleanup(models.Model):
    """One Free Disk Space run on an agent: why, what was removed, free space before and after."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="cleanups")
    at = models.DateTimeField()
    reason = models.CharField(max_length=300)
    data_path = models.CharField(max_length=500)
    required_bytes = models.BigIntegerField()
    free_before = models.BigIntegerField()
    free_after = models.BigIntegerField()
    bytes_reclaimed = models.BigIntegerField(default=0)
    removed = models.JSONField(default=list, blank=True, help_text="Images removed, least recently used first.")
    met = models.BooleanField(help_text="Whether the required free space was reached.")

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["agent", "at"])]

    def __str__(self):
        return f"free disk space on {self.agent} at {self.at:%Y-%m-%d %H:%M}"


class AgentJob(models.Model):
    """Work for an agent, which it pulls from the server (the server never connects to agents)."""

    class Kind(models.TextChoices):
        LOGIN = "login", "Log an API-driven build in"
        LOGOUT = "logout", "Log a build out"
        FREE_DISK_SPACE = "free_disk_space", "Free disk space"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CLAIMED = "claimed", "Taken by the agent"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    payload = models.JSONField(default=dict, blank=True, help_text="The job's parameters; never a secret.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["agent", "status"])]

    def __str__(self):
        return f"{self.kind} on {self.agent_id} ({self.status})"


class EventBatch(models.Model):
    """A batch of Docker operations an agent sent. Its records wait here until ingested (the task that
    ingests them carries only the batch's id, and a lost task is queued again); finishing a build
    waits for its batches."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="event_batches")
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    records = models.PositiveIntegerField()
    data = models.JSONField(default=list, blank=True, help_text="The records, until they are ingested.")
    received_at = models.DateTimeField()
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "first_seq"], name="event_batch_once")]
        indexes = [models.Index(fields=["agent", "ingested_at"])]
