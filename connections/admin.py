"""Admin for projects and connections. Secrets are write-only: never rendered, empty keeps them."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from . import roles
from .admin_roles import ProjectRolesAdmin, ProjectRolesTabularInline, choices_for, sees_everything
from .models import Connection, Membership, Project
from .selectors import connections_usable_by_any
from .services import connection_test

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

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(ProjectRolesAdmin):
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

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        roles.forget(request.user)  # the members inline may have changed the user's own role

    @admin.display(description="connections", ordering="_connection_count")
    def connection_count(self, obj):
        return obj._connection_count


@admin.register(Connection)
class ConnectionAdmin(ProjectRolesAdmin):
    form = ConnectionForm
    list_display = ("__str__", "name", "type", "registry_address", "account", "updated_at")
    list_select_related = ("project",)
    list_filter = ("type", ("project", admin.RelatedOnlyFieldListFilter), "credentials")
    search_fields = ("ident", "name", "registry", "username", "registry_id", "project__ident", "project__name")
    autocomplete_fields = ("project",)
    readonly_fields = ("registry_address", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("project", "ident", "name", "type", "registry", "registry_address")}),
        ("Docker registry", {
            "description": "Only for connections of type Docker registry.",
            "fields": ("username", "password"),
        }),
        ("Amazon ECR", {
            "description": "Only for connections of type Amazon ECR.",
            "fields": ("region", "registry_id", "credentials", "access_key_id", "secret_access_key",
                       "role_arn", "external_id", "endpoint_url"),
        }),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # A read-only page prints each field's value: a secret shows only whether one is stored.
        return [(title, {**options, "fields": tuple(f"{name}_state" if name in Connection.SECRET_FIELDS else name
                                                    for name in options["fields"])})
                for title, options in fieldsets]

    def _secret_state(name):  # noqa: N805 - builds a display method while the class body runs
        @admin.display(description=Connection._meta.get_field(name).verbose_name)
        def state(self, obj):
            return "stored (write-only)" if getattr(obj, name) else "—"

        return state

    password_state = _secret_state("password")
    secret_access_key_state = _secret_state("secret_access_key")
    external_id_state = _secret_state("external_id")
    del _secret_state

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
        return [path("<int:pk>/test/", test, name="connections_connection_test"), *super().get_urls()]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project")

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["may_test_connection"] = obj is not None and request.user.has_perm("connections.test_connection", obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def test_connection_view(self, request, pk):
        connection = self.get_object(request, str(pk))
        if connection is None:
            raise Http404("No such connection.")
        if not request.user.has_perm("connections.test_connection", connection):
            raise PermissionDenied
        result = connection_test(connection)
        details = format_html_join("", "<br>✓ {}", ((line,) for line in result.verified))
        if result.ok:
            self.message_user(request, format_html("Connection {} works.{}", connection, details), messages.SUCCESS)
        else:
            self.message_user(request, format_html("{}{}", result.error, details), messages.ERROR)
        return redirect(reverse("admin:connections_connection_change", args=[pk]))

    @admin.display(description="account")
    def account(self, obj):
        if obj.type == Connection.Type.AMAZON_ECR:
            return obj.role_arn or obj.access_key_id or "default chain"
        return obj.username


from . import admin_tokens  # noqa: E402,F401
