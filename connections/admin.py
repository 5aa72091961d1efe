"""Admin for projects and connections. Secrets are write-only: never rendered, empty keeps them."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from .models import Connection, Project
from .services import connection_test


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


class ConnectionInline(admin.TabularInline):
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
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("ident", "name", "parent", "connection_count")
    list_select_related = ("parent",)
    search_fields = ("ident", "name", "description")
    list_filter = (("parent", admin.RelatedOnlyFieldListFilter),)
    autocomplete_fields = ("parent",)
    inlines = [ConnectionInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_connection_count=Count("connections", distinct=True))

    @admin.display(description="connections", ordering="_connection_count")
    def connection_count(self, obj):
        return obj._connection_count


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
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

    def test_connection_view(self, request, pk):
        connection = get_object_or_404(Connection, pk=pk)
        if not self.has_view_permission(request, connection):
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
