"""What every admin page of projects, connections and builds shares: it lists, shows and allows only what the
user's project roles allow (connections/roles.py, asked through the `rules` permissions of permissions.py).

Superusers see everything. For others a row exists only when they are at least viewer of its project, and a
ForeignKey offers (in its form and in its autocomplete) only the rows its registered chooser returns.
"""

from collections.abc import Callable

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.forms.models import _get_foreign_key
from django.http import HttpRequest
from django.utils.html import conditional_escape

from . import roles

Role = roles.Role
Chooser = Callable[[HttpRequest], QuerySet]

# (app label, model name, field name) → chooser(request): the rows a non-superuser may pick in that field.
_CHOOSERS: dict[tuple[str, str, str], Chooser] = {}


def choices_for(model, field_name: str):
    """Decorator: `chooser(request) -> QuerySet` gives what a non-superuser may choose in `model.field_name`,
    both in the admin's forms and in the autocomplete that serves the field."""

    def register(chooser: Chooser) -> Chooser:
        _CHOOSERS[(model._meta.app_label, model._meta.model_name, field_name)] = chooser
        return chooser

    return register


def chooser_of(field) -> Chooser | None:
    return _CHOOSERS.get((field.model._meta.app_label, field.model._meta.model_name, field.name))


def sees_everything(request) -> bool:
    return roles.is_superuser(request.user)


def _autocomplete_chooser(request, model) -> Chooser | None:
    """The chooser of the field whose autocomplete (admin:autocomplete) asks for rows of `model`, if any.

    Django's autocomplete view names its source field in the query string and then lists the target
    admin's get_queryset(): the field's choices are those rows, not what the user may view."""
    match = getattr(request, "resolver_match", None)
    if match is None or match.url_name != "autocomplete":
        return None
    key = (request.GET.get("app_label", ""), request.GET.get("model_name", ""), request.GET.get("field_name", ""))
    chooser = _CHOOSERS.get(key)
    if chooser is None:
        return None
    field = apps.get_model(key[0], key[1])._meta.get_field(key[2])
    return chooser if field.remote_field.model is model else None


class _Choices:
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        # The admin renders help texts as HTML; ours are plain text with <placeholders> that must show.
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and field.help_text:
            field.help_text = conditional_escape(field.help_text)
        return field

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        chooser = chooser_of(db_field)
        if chooser is not None and "queryset" not in kwargs and not sees_everything(request):
            kwargs["queryset"] = chooser(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ProjectRolesAdmin(_Choices, admin.ModelAdmin):
    """A ModelAdmin whose rows belong to a project: listed for its viewers, each right asked of `rules`.

    `project_path` is the lookup from a row to its project ("pk" for Project itself); None keeps the
    model to superusers (agents, site-wide clean-up runs)."""

    project_path: str | None = "project"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if sees_everything(request):
            return queryset
        chooser = _autocomplete_chooser(request, self.model)
        if chooser is not None:
            return queryset.filter(pk__in=chooser(request).values("pk"))
        if self.project_path is None:
            return queryset.none()
        return queryset.filter(**{f"{self.project_path}__in": roles.projects_with(request.user, Role.VIEWER)})

    def _perm(self, action: str) -> str:
        return f"{self.opts.app_label}.{get_permission_codename(action, self.opts)}"

    def has_module_permission(self, request):
        return request.user.has_module_perms(self.opts.app_label)  # the app-level rule ("connections", "builds")

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(self._perm("view"), obj)

    def has_add_permission(self, request):
        return request.user.has_perm(self._perm("add"))

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(self._perm("change"), obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm(self._perm("delete"), obj)


class _InlineRoles(_Choices):
    """An inline's rows belong to the page's object (`obj`, the parent): each right is asked of `rules` for an
    unsaved row of that parent, e.g. may the user change a Membership of this project."""

    def _may(self, request, action: str, obj) -> bool:
        row = None
        if obj is not None:
            fk = _get_foreign_key(self.parent_model, self.model, fk_name=self.fk_name)
            row = self.model(**{fk.name: obj})
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename(action, self.opts)}", row)

    def has_view_permission(self, request, obj=None):
        return self._may(request, "view", obj)

    def has_add_permission(self, request, obj):
        return self._may(request, "add", obj)

    def has_change_permission(self, request, obj=None):
        return self._may(request, "change", obj)

    def has_delete_permission(self, request, obj=None):
        return self._may(request, "delete", obj)


class ProjectRolesTabularInline(_InlineRoles, admin.TabularInline):
    pass


def refuse_unless_each(admin_, request, perm: str, rows, verb: str) -> bool:
    """For an action: True when the user holds `perm` on every row; else says which rows they may not `verb`
    (nothing is changed: the action stops)."""
    refused = [row for row in rows if not request.user.has_perm(perm, row)]
    if not refused:
        return True
    names = ", ".join(str(row) for row in refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
    admin_.message_user(request, f"Nothing done: you may not {verb} {names} (your role on its project does not "
                                 "allow it).", messages.ERROR)
    return False
