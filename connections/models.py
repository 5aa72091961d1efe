"""Projects (a tree), their members' roles, the registry connections defined on them, and API tokens."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from agent.references import ECR_PUBLIC

from . import validators
from .fields import EncryptedTextField


class Project(models.Model):
    ident = models.CharField(
        "id", max_length=64, unique=True, validators=[validators.validate_ident],
        help_text="Stable identifier used by the settings file, the API and the commands.",
    )
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="subprojects",
        help_text="Connections of the parent and its ancestors are usable here too.",
    )
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["ident"]

    def __str__(self):
        return self.name if self.name == self.ident else f"{self.name} ({self.ident})"

    def lineage(self) -> list["Project"]:
        """This project, then its parent, up to the root."""
        chain, seen, node = [], set(), self
        while node is not None and node.pk not in seen:
            chain.append(node)
            seen.add(node.pk)
            node = node.parent
        return chain

    # The settings file moves projects and replaces login lists in one apply: it asks `tree_problems` once it
    # has done both, instead of each save refusing a move that a later entry of the file makes right.
    defer_tree_check = False

    def clean(self):
        if self.parent_id is not None:
            node = self.parent
            while node is not None:
                if self.pk is not None and node.pk == self.pk:
                    raise ValidationError({"parent": "a project cannot be its own ancestor"})
                node = node.parent
        if not self.defer_tree_check:
            problems = self._move_problems()
            if problems:
                raise ValidationError({"parent": [*_bounded(problems), TREE_FIX]})

    def _move_problems(self) -> list[str]:
        """The login lists that moving this project (and so its subtree) under its new parent would break."""
        if self.pk is None:
            return []
        stored = type(self).objects.filter(pk=self.pk).values("parent_id").first()
        if stored is None or stored["parent_id"] == self.parent_id:
            return []
        before = _project_parents()
        after = {**before, self.pk: self.parent_id}
        subtree = _subtree(self.pk, before)
        return [
            _tree_problem(login) for login in _login_rows(
                models.Q(configuration__project_id__in=subtree) | models.Q(connection__project_id__in=subtree))
            if login["connection__project_id"] in _ancestry(login["configuration__project_id"], before)
            and login["connection__project_id"] not in _ancestry(login["configuration__project_id"], after)
        ]

    def tree_problems(self) -> list[str]:
        """The logins of configurations in this project's subtree (or with its connections) that use a connection
        outside their configuration's project and its ancestors, as stored now; at most TREE_PROBLEMS_SHOWN."""
        parents = _project_parents()
        subtree = _subtree(self.pk, parents)
        return _bounded([
            _tree_problem(login) for login in _login_rows(
                models.Q(configuration__project_id__in=subtree) | models.Q(connection__project_id__in=subtree))
            if login["connection__project_id"] not in _ancestry(login["configuration__project_id"], parents)
        ])


# A configuration's login list uses connections of its project and its ancestors only (LoginConnection.clean).
# Moving a project or a connection must keep it so: these helpers find the login lists a move would break.
# connections does not import builds: the logins are reached through Connection's reverse relation.
TREE_PROBLEMS_SHOWN = 20
TREE_FIX = ("remove those logins from the configurations first and add connections of the new tree after the move "
            "(a settings file can do both in one apply)")


def _project_parents() -> dict:
    """Each project's parent id, as stored: one query, however deep the tree."""
    return dict(Project.objects.values_list("pk", "parent_id"))


def _ancestry(pk, parents: dict) -> set:
    """The project's id and its ancestors' in the tree that `parents` describes."""
    chain = set()
    while pk is not None and pk not in chain:
        chain.add(pk)
        pk = parents.get(pk)
    return chain


def _subtree(pk, parents: dict) -> set:
    """The project's id and its descendants' in the tree that `parents` describes."""
    children: dict = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pk]
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(children.get(node, ()))
    return found


def _login_rows(condition):
    logins = Connection.logins.field.model.objects  # builds.LoginConnection
    return logins.filter(condition).order_by("configuration__ident", "position", "pk").values(
        "configuration__ident", "configuration__project_id", "configuration__project__ident",
        "connection__ident", "connection__project_id", "connection__project__ident",
    )


def _tree_problem(login: dict) -> str:
    return (f"configuration '{login['configuration__ident']}' (project '{login['configuration__project__ident']}') "
            f"logs in with connection '{login['connection__ident']}' of project "
            f"'{login['connection__project__ident']}', which would no longer be its project or an ancestor")


def _bounded(problems: list[str]) -> list[str]:
    if len(problems) <= TREE_PROBLEMS_SHOWN:
        return problems
    return [*problems[:TREE_PROBLEMS_SHOWN], f"and {len(problems) - TREE_PROBLEMS_SHOWN} more"]


class Connection(models.Model):
    class Type(models.TextChoices):
        DOCKER_REGISTRY = "docker-registry", "Docker registry"
        AMAZON_ECR = "amazon-ecr", "Amazon ECR"

    class Credentials(models.TextChoices):
        ACCESS_KEYS = "access-keys", "Access keys"
        TEMPORARY = "temporary", "Temporary credentials (STS AssumeRole)"
        DEFAULT_CHAIN = "default-chain", "Default AWS credential provider chain"

    class RepositoryType(models.TextChoices):
        PRIVATE = "private", "Private (<registry ID>.dkr.ecr.<region>.amazonaws.com)"
        PUBLIC = "public", f"Public ({ECR_PUBLIC})"

    SECRET_FIELDS = ("password", "secret_access_key", "external_id")
    TYPE_SECRETS = {
        Type.DOCKER_REGISTRY: ("password",),
        Type.AMAZON_ECR: ("secret_access_key", "external_id"),
    }
    # Where the secrets (or the tokens they buy) are sent. A stored secret only ever goes where it was
    # given for: changing any of these needs the secrets again (see `_clean_destination`).
    # The IAM role is one too: AssumeRole hands the external ID to the account that owns the role.
    # The repository type is one: a public connection sends its keys to ecr-public and its token to public.ecr.aws.
    DESTINATION_FIELDS = ("type", "repository_type", "registry", "registry_id", "region", "endpoint_url", "role_arn")
    # The external ID goes to AWS inside an AssumeRole call signed by the base credentials: whoever sets other
    # base keys would have it sent under an identity of theirs (and read it in their CloudTrail).
    EXTERNAL_ID_IDENTITY = ("credentials", "access_key_id")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="connections")
    ident = models.CharField(
        "id", max_length=64, validators=[validators.validate_ident],
        help_text="Unique within the project; build configurations name it in their login list.",
    )
    name = models.CharField(max_length=200, blank=True)
    type = models.CharField(max_length=20, choices=Type.choices, default=Type.DOCKER_REGISTRY)

    # Docker registry
    registry = models.CharField(
        "registry address", max_length=255, blank=True, validators=[validators.validate_registry_address],
        help_text="Empty for Docker Hub, host[:port] (e.g. 127.0.0.1:5000) or a URL. For Amazon ECR, "
                  "empty means <registry ID>.dkr.ecr.<region>.amazonaws.com; set it to reach the registry "
                  "through another name (a VPC endpoint's DNS name or a test double).",
    )
    username = models.CharField(max_length=255, blank=True)
    password = EncryptedTextField(help_text="Password or access token. Write-only.")

    # Amazon ECR
    repository_type = models.CharField(
        "repository type", max_length=10, choices=RepositoryType.choices, default=RepositoryType.PRIVATE,
        help_text=f"Private: the account's own registry. Public: Amazon ECR Public "
                  f"({ECR_PUBLIC}/<alias>/<repository>); its token always comes from ecr-public in us-east-1, "
                  "whatever the region below (which STS uses), and the registry address stays empty.",
    )
    region = models.CharField("AWS region", max_length=32, blank=True)
    credentials = models.CharField(
        "credentials type", max_length=20, choices=Credentials.choices, blank=True,
    )
    access_key_id = models.CharField(
        "access key ID", max_length=128, blank=True, validators=[validators.validate_access_key_id],
    )
    secret_access_key = EncryptedTextField("secret access key", help_text="Write-only.")
    role_arn = models.CharField(
        "IAM role ARN", max_length=600, blank=True, validators=[validators.validate_role_arn],
    )
    external_id = EncryptedTextField("external ID", help_text="Sent with AssumeRole. Write-only.")
    registry_id = models.CharField(
        "registry ID", max_length=12, blank=True, validators=[validators.validate_registry_id],
        help_text="The AWS account ID that owns the registry.",
    )
    endpoint_url = models.CharField(
        "endpoint URL", max_length=255, blank=True, validators=[validators.validate_endpoint_url],
        help_text="Optional: a VPC endpoint or a test double for the AWS APIs.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # The secret fields that the writer of this change gave (typed in the admin, present in the settings
    # file), even when equal to the stored value; a secret that differs from the stored one is given too.
    secrets_given: frozenset = frozenset()

    class Meta:
        ordering = ["project__ident", "ident"]
        constraints = [
            models.UniqueConstraint(fields=["project", "ident"], name="connection_ident_unique_in_project"),
        ]

    def __str__(self):
        return f"{self.project.ident}/{self.ident}"

    @property
    def registry_address(self) -> str:
        """The registry host[:port] that images of this connection are named with."""
        if self.is_ecr_public:
            return ECR_PUBLIC
        if self.type == self.Type.AMAZON_ECR and not self.registry:
            return f"{self.registry_id}.dkr.ecr.{self.region}.amazonaws.com"
        return validators.registry_host(self.registry)

    @property
    def is_ecr_public(self) -> bool:
        return self.type == self.Type.AMAZON_ECR and self.repository_type == self.RepositoryType.PUBLIC

    @property
    def is_docker_hub(self) -> bool:
        return self.type == self.Type.DOCKER_REGISTRY and self.registry_address in (
            "docker.io", "index.docker.io", "registry-1.docker.io",
        )

    def save(self, *args, **kwargs):
        # Whatever path writes the row (admin, settings file, shell), stored secrets stay with their destination.
        errors = self._clean_destination()
        if errors:
            raise ValidationError(errors)
        super().save(*args, **kwargs)

    def destination_changes(self) -> list[str]:
        """The destination fields whose values differ from the stored row (none for a new connection)."""
        if self.pk is None:
            return []
        stored = type(self).objects.filter(pk=self.pk).values(*self.DESTINATION_FIELDS).first()
        if stored is None:
            return []
        return [name for name in self.DESTINATION_FIELDS if getattr(self, name) != stored[name]]

    def secret_moves(self) -> dict[str, list[str]]:
        """For each stored secret: the changes (by label) that would send it somewhere it was not given for.

        Every secret follows the destination fields; the external ID also follows the identity that signs
        its AssumeRole call (credentials type, access key ID, a new secret access key)."""
        if self.pk is None:
            return {}
        stored = type(self).objects.filter(pk=self.pk).values(*self.EXTERNAL_ID_IDENTITY, "secret_access_key").first()
        if stored is None:
            return {}
        moved = self.destination_changes()
        identity = [name for name in self.EXTERNAL_ID_IDENTITY if getattr(self, name) != stored[name]]
        if "secret_access_key" in self.secrets_given and self.secret_access_key != stored["secret_access_key"]:
            identity.append("secret_access_key")

        def labels(names):
            return [str(self._meta.get_field(name).verbose_name) for name in names]

        return {name: labels(moved + identity if name == "external_id" else moved)
                for name in self.SECRET_FIELDS if moved or (name == "external_id" and identity)}

    def _clean_destination(self) -> dict:
        """A change of where the connection sends its secrets must give those secrets again."""
        moves = self.secret_moves()
        if not moves:
            return {}
        stored = type(self).objects.filter(pk=self.pk).values(*self.SECRET_FIELDS).get()
        return {
            name: f"{' and '.join(moves[name])} changed: give the {self._meta.get_field(name).verbose_name} again; "
                  "a stored secret is only sent to the destination it was given for"
            for name in moves
            if getattr(self, name) and getattr(self, name) == stored[name] and name not in self.secrets_given
        }

    def clean(self):
        errors = self._clean_destination()
        moves = self._move_problems()
        if moves:
            errors["project"] = [*_bounded(moves), TREE_FIX]
        if self.type == self.Type.DOCKER_REGISTRY:
            if not self.username:
                errors["username"] = "a Docker registry connection needs a username"
            if not self.password:
                errors["password"] = "a Docker registry connection needs a password or access token"
            for field in ("region", "credentials", "access_key_id", "secret_access_key", "role_arn",
                          "external_id", "registry_id", "endpoint_url"):
                if getattr(self, field):
                    errors[field] = "only Amazon ECR connections use this field"
            if self.repository_type != self.RepositoryType.PRIVATE:
                errors["repository_type"] = "only Amazon ECR connections have a repository type: leave it private"
        elif self.type == self.Type.AMAZON_ECR:
            errors.update(self._clean_ecr())
        if errors:
            raise ValidationError(errors)

    def _move_problems(self) -> list[str]:
        """The login lists that moving this connection to another project would break."""
        if self.pk is None or self.project_id is None:
            return []
        stored = type(self).objects.filter(pk=self.pk).values("project_id").first()
        if stored is None or stored["project_id"] == self.project_id:
            return []
        parents = _project_parents()
        return [
            f"configuration '{login['configuration__ident']}' (project '{login['configuration__project__ident']}') "
            f"logs in with connection '{self.ident}', whose new project '{self.project.ident}' would not be its "
            "project or an ancestor"
            for login in _login_rows(models.Q(connection_id=self.pk))
            if stored["project_id"] in _ancestry(login["configuration__project_id"], parents)
            and self.project_id not in _ancestry(login["configuration__project_id"], parents)
        ]

    def default_chain_problems(self) -> dict:
        """The default credential chain is the server's own AWS identity: its tokens go to AWS's hosts only.

        Anyone who may edit connections could otherwise point one at a host of theirs and receive
        an ECR token of the server's account. DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST lifts this.
        """
        if self.credentials != self.Credentials.DEFAULT_CHAIN or settings.DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST:
            return {}
        problems = {}
        hosts = {"registry": validators.registry_host(self.registry) if self.registry else "",
                 "endpoint_url": urlsplit(self.endpoint_url).hostname or "" if self.endpoint_url else ""}
        for name, host in hosts.items():
            if host and not validators.is_aws_host(host.split(":")[0]):
                problems[name] = (
                    f"'{host}' is not an AWS host name (*.amazonaws.com): with the default credential chain (the "
                    "server's own AWS identity) tokens go to AWS only; set DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST=true "
                    "to allow other hosts"
                )
        return problems

    def _clean_ecr_repository(self) -> dict:
        """Private needs its account's registry ID; public is public.ecr.aws alone (the registry ID, optional, names
        the account that owns the public registry). Neither sends its token to the other's host."""
        errors = {}
        registry_host = validators.registry_host(self.registry) if self.registry else ""
        if self.repository_type == self.RepositoryType.PUBLIC:
            if self.registry:
                errors["registry"] = (f"an Amazon ECR Public connection logs in to {ECR_PUBLIC} only: leave the "
                                      "registry address empty")
        elif self.repository_type == self.RepositoryType.PRIVATE:
            if not self.registry_id:
                errors["registry_id"] = "an Amazon ECR connection needs the registry ID (12-digit AWS account ID)"
            if registry_host == ECR_PUBLIC:
                errors["registry"] = (f"{ECR_PUBLIC} is Amazon ECR Public: choose repository type public and leave "
                                      "the registry address empty")
        return errors

    def _clean_ecr(self) -> dict:
        errors = {}
        for field in ("username", "password"):
            if getattr(self, field):
                errors[field] = "only Docker registry connections use this field"
        try:
            validators.validate_aws_region(self.region)
        except ValidationError as exc:
            errors["region"] = exc.messages[0]
        errors.update(self._clean_ecr_repository())
        if not self.credentials:
            errors["credentials"] = "choose access-keys, temporary or default-chain"
        needs_keys = self.credentials in (self.Credentials.ACCESS_KEYS, self.Credentials.TEMPORARY)
        if needs_keys:
            if not self.access_key_id:
                errors["access_key_id"] = f"credentials type {self.credentials} needs an access key ID"
            if not self.secret_access_key:
                errors["secret_access_key"] = f"credentials type {self.credentials} needs a secret access key"
        elif self.credentials == self.Credentials.DEFAULT_CHAIN:
            for field in ("access_key_id", "secret_access_key"):
                if getattr(self, field):
                    errors[field] = "the default credential provider chain takes no keys: leave this empty"
        if self.credentials == self.Credentials.DEFAULT_CHAIN:
            errors.update(self.default_chain_problems())
        if self.credentials == self.Credentials.TEMPORARY:
            if not self.role_arn:
                errors["role_arn"] = "temporary credentials need the IAM role ARN to assume"
        elif self.credentials:
            for field in ("role_arn", "external_id"):
                if getattr(self, field):
                    errors[field] = "only temporary credentials (AssumeRole) use this field"
        return errors


class Membership(models.Model):
    """A user's role on a project, which holds on its subprojects too (connections/roles.py)."""

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"
        DEVELOPER = "developer", "Developer"
        ADMIN = "admin", "Admin"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, help_text=(
        "Viewer: sees configurations, builds, Docker Info and clean-up records. Developer: also starts, "
        "finishes and pins builds and tests connections. Admin: also edits the project, its connections, "
        "configurations, subprojects and members, and runs its clean-up."))

    class Meta:
        ordering = ["project__ident", "user__username"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_role_per_project")]

    def __str__(self):
        return f"{self.user} is {self.role} of {self.project.ident}"


class ApiToken(models.Model):
    """A user's token for the REST API. Stored as its SHA-256 digest: the token is shown once, when made.

    It acts for its user, narrowed to `projects` (and their subprojects) when any are given, and to
    reading when `read_only`; it stops at `expires_at` or when revoked.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. the CI system's name.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="Its first characters, to recognise it.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: it does not expire.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    read_only = models.BooleanField(default=False, help_text="It reads only: it starts, finishes and changes nothing.")
    projects = models.ManyToManyField(
        Project, blank=True, related_name="+",
        help_text="Only these projects and their subprojects. Empty: every project its user has a role on.",
    )
    # Made limited to projects: it stays limited to what is left of them, none once all are deleted.
    limited = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["user__username", "-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())
