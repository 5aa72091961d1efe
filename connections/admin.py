"""Admin for projects and connections. Secrets are write-only: never rendered, empty keeps them."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from dockersupport_site.admin_display import cut

from . import roles
from .admin_roles import ProjectRolesAdmin, ProjectRolesTabularInline, choices_for, sees_everything
from .models import Connection, Membership, Project
from .selectors import connections_usable_by, connections_usable_by_any
from .services import ConnectionTestResult, connection_test, connection_test_unsaved

Role = roles.Role


@choices_for(Connection, "project")
@choices_for(Project, "parent")
def administered_projects(request):
    """Where a member may put a connection, a configuration or a subproject: the projects they administer."""
    return Project.objects.filter(pk__in=roles.projects_with(request.user, Role.ADMIN))


def usable_connections(request):
    """The connections that builds of the projects a member administers may log in with: those projects' own
    and their ancestors', never another team's."""
    return connections_usable_by_any(roles.projects_with(request.user, Role.ADMIN))


@choices_for(Membership, "user")
def member_candidates(request):
    user_model = get_user_model()
    return user_model.objects.filter(is_active=True).order_by(user_model.USERNAME_FIELD)


class ConnectionForm(forms.ModelForm):
    class Meta:
        model = Connection
        fields = "__all__"
        widgets = {
            name: forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            for name in Connection.SECRET_FIELDS
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in Connection.SECRET_FIELDS:
            if name not in self.fields:  # a read-only page has no form fields
                continue
            field = self.fields[name]
            field.required = False
            self.initial.pop(name, None)  # the plaintext never travels to the browser
            stored = bool(self.instance.pk and getattr(self.instance, name))
            state = "A value is stored; leave empty to keep it." if stored else "Nothing stored yet."
            field.help_text = f"{field.help_text} {state}".strip()
        if "repository_type" in self.fields:
            self.fields["repository_type"].required = False  # only ECR's fieldset shows it; none sent means private

    def clean_repository_type(self):
        return self.cleaned_data.get("repository_type") or Connection.RepositoryType.PRIVATE

    @property
    def changed_data(self):
        # No repository type sent (a Docker registry's POST, a script's) is private: no change for the history.
        return [name for name in super().changed_data
                if name != "repository_type" or self.data.get(self.add_prefix(name))]

    def _post_clean(self):
        # What was typed is given, even when equal to the stored value (see Connection._clean_destination).
        self.instance.secrets_given = frozenset(
            name for name in Connection.SECRET_FIELDS if self.cleaned_data.get(name))
        # An empty secret field keeps the stored value: the widget never shows it to be re-sent.
        for name in Connection.SECRET_FIELDS:
            if not self.cleaned_data.get(name) and self.instance.pk:
                self.cleaned_data[name] = Connection.objects.filter(pk=self.instance.pk).values_list(
                    name, flat=True
                ).get()
        # Secrets the chosen type does not use are dropped rather than kept out of sight.
        kind = self.cleaned_data.get("type")
        for other_kind, names in Connection.TYPE_SECRETS.items():
            if other_kind != kind:
                for name in names:
                    self.cleaned_data[name] = ""
        super()._post_clean()


class MembershipInline(ProjectRolesTabularInline):
    """The project's own members (roles inherited from its ancestors are not listed); its admins edit them."""

    model = Membership
    fields = ("user", "role")
    extra = 0
    verbose_name = "member"
    verbose_name_plural = "members (each role holds on the subprojects too)"


class ConnectionInline(ProjectRolesTabularInline):
    """Read-only list of a project's connections, each linking to its own page."""

    model = Connection
    fields = ("ident", "name", "type", "registry_address")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "connections of this project (the inherited ones are listed under Links)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # A list to read: its rows are edited on their own pages, so a POST of the project's page (even one
        # naming another project's connection) never validates or saves them.
        return False


# --- Links between pages --------------------------------------------------------------------------------


def admin_link(request, obj, text=None):
    """A link to the row's admin page when the user may view it; None when they may not (nor know of it)."""
    opts = obj._meta
    if not request.user.has_perm(f"{opts.app_label}.view_{opts.model_name}", obj):
        return None
    return format_html('<a href="{}">{}</a>', reverse(f"admin:{opts.app_label}_{opts.model_name}_change",
                                                      args=[obj.pk]), obj if text is None else text)


def join_lines(items):
    """Safe HTML items (or plain text, escaped) one per line."""
    return format_html_join(mark_safe("<br>"), "{}", ((item,) for item in items))


def links_list(links, empty="none", hidden=0):
    """Links separated by line breaks; `hidden` rows the user may not see are counted, never named."""
    shown = [link for link in links if link is not None]
    parts = [join_lines(shown) if shown else empty]
    if hidden:
        parts.append(format_html('<span class="quiet">(and {} in projects you do not see)</span>', hidden))
    return join_lines(parts)


def add_link(url_name, text, **prefill):
    return format_html('<a class="addlink" href="{}?{}">{}</a>', reverse(url_name), urlencode(prefill), text)


class RelatedLinksAdmin(ProjectRolesAdmin):
    """A change page with a "Links" box at its top: what the row belongs to and what uses it (related_links)."""

    change_form_template = "admin/connections/related_change_form.html"

    def related_links(self, request, obj) -> list[tuple[str, str]]:
        """(label, HTML) pairs; only what the user's role lets them see."""
        return []

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["related_links"] = self.related_links(request, obj) if obj is not None else []
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(Project)
class ProjectAdmin(RelatedLinksAdmin):
    project_path = "pk"
    list_display = ("ident", "name", "parent", "connection_count")
    list_select_related = ("parent",)
    search_fields = ("ident", "name", "description")
    list_filter = (("parent", admin.RelatedOnlyFieldListFilter),)
    autocomplete_fields = ("parent",)
    inlines = [MembershipInline, ConnectionInline]
    parent_required = "Choose the parent project (one you administer): only a superuser adds a top-level project."

    def get_queryset(self, request):
        # A GROUP BY query drops Meta.ordering: ordered again for the autocomplete's pagination.
        return super().get_queryset(request).annotate(
            _connection_count=Count("connections", distinct=True)).order_by("ident")

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        parent = form.base_fields.get("parent")
        if parent is not None and not sees_everything(request):
            parent.required = True
            parent.error_messages["required"] = self.parent_required
        return form

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        # A member moves a project only between projects they administer; a top-level one stays so.
        if obj is not None and not sees_everything(request) and (
                obj.parent_id is None or not roles.has_role(request.user, obj.parent_id, Role.ADMIN)):
            return (*fields, "parent")
        return fields

    def related_links(self, request, obj):
        links = []
        if obj.parent_id is not None:
            links.append(("Parent", admin_link(request, obj.parent) or str(obj.parent)))
        subprojects = list(obj.subprojects.order_by("ident"))
        shown = [admin_link(request, project) for project in subprojects]
        items = [links_list(shown, hidden=shown.count(None))]
        if request.user.has_perm("connections.change_project", obj):
            items.append(add_link("admin:connections_project_add", "Add a subproject", parent=obj.pk))
        links.append(("Subprojects", join_lines(items)))
        inherited = [connection for connection in connections_usable_by(obj) if connection.project_id != obj.pk]
        rows = [admin_link(request, connection) for connection in inherited]
        shown = [format_html("{} ({}) — inherited from {}", row, connection.registry_address or "Docker Hub",
                             admin_link(request, connection.project) or connection.project)
                 for row, connection in zip(rows, inherited) if row is not None]
        items = [format_html("{} of its own (listed below)", obj.connections.count()),
                 links_list(shown, empty="no inherited connection", hidden=rows.count(None))]
        if request.user.has_perm("connections.add_connection", Connection(project=obj)):
            items.append(add_link("admin:connections_connection_add", "Add a connection", project=obj.pk))
        links.append(("Connections its builds may use",
                      join_lines(items)))
        return links

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        roles.forget(request.user)  # the members inline may have changed the user's own role

    @admin.display(description="connections", ordering="_connection_count")
    def connection_count(self, obj):
        return obj._connection_count


def test_report(connection: Connection, result: ConnectionTestResult) -> dict:
    """What a connection test found, in words that are true: a 401 at /v2/ is the registry asking for a login,
    the login is proven by its 200 once the credentials are sent. Never holds a secret."""
    address = connection.registry_address or "Docker Hub"
    steps = [_step(line) for line in result.verified]
    if not result.ok:
        title = f"✗ {result.error}"
    elif connection.is_ecr_public:
        title = (f"✓ Amazon ECR Public accepted the credentials: ecr-public (us-east-1) gave a token for {address} "
                 "(public.ecr.aws itself is not asked)")
    elif "the registry asks for no login" in result.verified:
        title = (f"✓ {address} reached: it asks for no login (its /v2/ answered 200 without credentials), "
                 "so the credentials were not checked")
    else:
        title = f"✓ Logged in to {address} (the registry answered /v2/ with 200 after authentication)"
    return {"ok": result.ok, "title": title, "steps": steps, "errors": []}


def _step(line: str) -> str:
    if line.startswith("registry reached at ") and line.endswith(" (HTTP 401)"):
        return line.removesuffix(" (HTTP 401)") + ": it asks for a login (HTTP 401 without credentials)"
    return line


@admin.register(Connection)
class ConnectionAdmin(RelatedLinksAdmin):
    form = ConnectionForm
    change_form_template = "admin/connections/connection/change_form.html"
    list_display = ("connection", "type", "address", "account_cut", "updated")
    list_select_related = ("project",)
    list_filter = ("type", ("project", admin.RelatedOnlyFieldListFilter), "credentials")
    search_fields = ("ident", "name", "registry", "username", "registry_id", "project__ident", "project__name")
    autocomplete_fields = ("project",)
    readonly_fields = ("resolved_address", "created_at", "updated_at")
    # The type's own fields are in its fieldset; connections/connection_form.js shows only the chosen type's.
    fieldsets = (
        (None, {"fields": ("project", "ident", "name", "type", "registry")}),
        ("Docker registry", {
            "classes": ("ds-type", "ds-type-docker-registry"),
            "fields": ("username", "password"),
        }),
        ("Amazon ECR", {
            "classes": ("ds-type", "ds-type-amazon-ecr"),
            "fields": ("repository_type", "region", "registry_id", "credentials", "access_key_id", "secret_access_key",
                       "role_arn", "external_id", "endpoint_url"),
        }),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    class Media:
        js = ("connections/connection_form.js",)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:  # nothing to tell of a connection not made yet
            return [(title, options) for title, options in fieldsets if title != "History"]
        # Where the images of a saved connection are named (derived for ECR).
        (title, options), *others = fieldsets
        fieldsets = [(title, {**options, "fields": (*options["fields"], "resolved_address")}), *others]
        if self.has_change_permission(request, obj):
            return fieldsets
        # A read-only page shows its own type's fields only, and of a secret only whether one is stored.
        return [(title, {**options, "fields": tuple(f"{name}_state" if name in Connection.SECRET_FIELDS else name
                                                    for name in options["fields"])})
                for title, options in fieldsets
                if "ds-type" not in options.get("classes", ()) or f"ds-type-{obj.type}" in options["classes"]]

    def _secret_state(name):  # noqa: N805 - builds a display method while the class body runs
        @admin.display(description=Connection._meta.get_field(name).verbose_name)
        def state(self, obj):
            return "stored (write-only)" if getattr(obj, name) else "—"

        return state

    password_state = _secret_state("password")
    secret_access_key_state = _secret_state("secret_access_key")
    external_id_state = _secret_state("external_id")
    del _secret_state

    @admin.display(description="images are named with")
    def resolved_address(self, obj):
        """The host[:port] the connection logs in to (for ECR derived from registry ID and region)."""
        return obj.registry_address or "Docker Hub"

    @admin.display(description="connection", ordering="project__ident")
    def connection(self, obj):
        if not obj.name:
            return str(obj)
        return format_html('{}<br><span class="quiet">{}</span>', obj, obj.name)

    @admin.display(description="registry", ordering="registry")
    def address(self, obj):
        return cut(obj.registry_address or "Docker Hub", 15)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj):
        return format_html('<span style="white-space:nowrap" title="{}">{}</span>', obj.updated_at,
                           f"{obj.updated_at:%Y-%m-%d}")

    def construct_change_message(self, request, form, formsets, add=False):
        """The history names where the connection used to send its secrets and where it sends them now."""
        message = super().construct_change_message(request, form, formsets, add)
        if add or not message or "changed" not in message[0]:
            return message
        fields = []
        for name in form.changed_data:
            label = str(form.fields[name].label or name)
            if name in Connection.SECRET_FIELDS:
                fields.append(f"{label} (replaced)")
            elif name in Connection.DESTINATION_FIELDS:
                before, after = form.initial.get(name) or "(empty)", form.cleaned_data.get(name) or "(empty)"
                fields.append(f"{label} ({before} → {after})")
            else:
                fields.append(label)
        message[0]["changed"]["fields"] = fields
        return message

    def get_urls(self):
        test = self.admin_site.admin_view(require_POST(self.test_connection_view))
        typed = self.admin_site.admin_view(require_POST(self.test_typed_view))
        return [
            path("<int:pk>/test/", test, name="connections_connection_test"),
            path("test-typed/", typed, name="connections_connection_test_typed"),
            path("<int:pk>/test-typed/", typed, name="connections_connection_test_typed"),
            *super().get_urls(),
        ]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project")

    def get_search_results(self, request, queryset, search_term):
        """An autocomplete asked with `usable_by=<project id>` offers only the connections that project's builds may
        use (its own and its ancestors'): the login list of a configuration sends its project (usable_by.js)."""
        queryset, distinct = super().get_search_results(request, queryset, search_term)
        match = getattr(request, "resolver_match", None)
        usable_by = request.GET.get("usable_by", "")
        if match is not None and match.url_name == "autocomplete" and usable_by:
            project = Project.objects.filter(pk=int(usable_by)).first() if usable_by.isdigit() else None
            queryset = queryset.filter(project__in=[p.pk for p in project.lineage()]) if project else queryset.none()
        return queryset, distinct

    def related_links(self, request, obj):
        return [("Project", admin_link(request, obj.project) or str(obj.project))]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        may_change = self.has_change_permission(request, obj) if obj is not None else self.has_add_permission(request)
        if may_change:  # the values in the form, typed or not yet saved
            context["test_url"] = reverse("admin:connections_connection_test_typed",
                                          kwargs={"pk": obj.pk} if obj is not None else {})
            context["test_typed"] = True
        elif obj is not None and request.user.has_perm("connections.test_connection", obj):
            context["test_url"] = reverse("admin:connections_connection_test", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _test_answer(self, request, report, connection=None):
        """JSON for the page's script; without it, a page with the result (the browser's Back keeps the form)."""
        if "application/json" in request.headers.get("Accept", ""):
            return JsonResponse(report)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Connection test",
                   "report": report, "original": connection}
        return TemplateResponse(request, "admin/connections/connection/test_result.html", context)

    def test_connection_view(self, request, pk):
        """Tests the saved connection (developers test; they do not edit)."""
        connection = self.get_object(request, str(pk))
        if connection is None:
            raise Http404("No such connection.")
        if not request.user.has_perm("connections.test_connection", connection):
            raise PermissionDenied
        report = test_report(connection, connection_test(connection))
        if "application/json" in request.headers.get("Accept", ""):
            return JsonResponse(report)
        details = format_html_join("", "<br>· {}", ((line,) for line in report["steps"]))
        self.message_user(request, format_html("{}{}", report["title"], details),
                          messages.SUCCESS if report["ok"] else messages.ERROR)
        return redirect(reverse("admin:connections_connection_change", args=[pk]))

    def test_typed_view(self, request, pk=None):
        """Tests the values POSTed from the connection's form without saving anything (connection_test_unsaved)."""
        stored = None
        if pk is not None:
            stored = self.get_object(request, str(pk))
            if stored is None:
                raise Http404("No such connection.")
            if not self.has_change_permission(request, stored):
                raise PermissionDenied
        elif not self.has_add_permission(request):
            raise PermissionDenied
        form_class = self.get_form(request, stored, change=stored is not None)
        form = form_class(request.POST, instance=stored)
        if not form.is_valid():
            errors = [f"{form.fields[name].label if name in form.fields else 'form'}: {message}"
                      for name, messages_ in form.errors.items() for message in messages_]
            return self._test_answer(request, {"ok": False, "title": "✗ Not tested: correct the form first",
                                               "steps": [], "errors": errors}, stored)
        typed = form.instance
        if not request.user.has_perm("connections.test_connection", typed) or (
                stored is not None and not request.user.has_perm("connections.test_connection", stored)):
            raise PermissionDenied
        return self._test_answer(request, test_report(typed, connection_test_unsaved(typed)), stored)

    @admin.display(description="account")
    def account(self, obj):
        if obj.type == Connection.Type.AMAZON_ECR:
            return obj.role_arn or obj.access_key_id or "default chain"
        return obj.username

    @admin.display(description="account")
    def account_cut(self, obj):
        return cut(self.account(obj), 11)


from . import admin_tokens  # noqa: E402,F401
