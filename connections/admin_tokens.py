"""Admin of API tokens: each user makes, sees and revokes their own; a superuser sees and revokes anyone's.

A token is shown once, on the page that answers its making (only its digest is stored; it travels in
no cookie or message), and is never edited afterwards: revoking it is the one change.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from . import roles
from .models import ApiToken, Project
from .services import api_token_issue, api_token_revoke

ADD_FIELDS = ("name", "expires_at", "projects", "read_only")
VIEW_FIELDS = ("name", "user", "shown_prefix", "limits", "created_at", "expires_at", "last_used_at", "revoked_at")


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ADD_FIELDS

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future; leave it empty for a token that does "
                                        "not expire.")
        return expires_at


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("usable", "usable"), ("expired", "expired"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "usable":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now, revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenAddForm
    list_display = ("shown_prefix", "name", "user", "limits", "created_at", "expires_at", "last_used_at",
                    "revoked_at")
    list_display_links = ("shown_prefix", "name")
    list_select_related = ("user",)
    list_filter = (StateFilter, "read_only")
    search_fields = ("name", "prefix", "user__username")
    filter_horizontal = ("projects",)
    actions = ["revoke"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).prefetch_related("projects")
        return queryset if roles.is_superuser(request.user) else queryset.filter(user=request.user)

    # Permissions: the `connections.*_apitoken` rules (own tokens; a superuser's any). Nothing is
    # edited after creation: the change page only shows, and revoking is its own action.
    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("connections.view_apitoken", obj)

    def has_add_permission(self, request):
        return request.user.has_perm("connections.add_apitoken")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("connections.delete_apitoken", obj)

    def has_revoke_permission(self, request, obj=None):
        return request.user.has_perm("connections.change_apitoken", obj)

    def get_fields(self, request, obj=None):
        return ADD_FIELDS if obj is None else VIEW_FIELDS

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else VIEW_FIELDS

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "projects":
            # Only projects where the user has a role: a token cannot reach beyond its user.
            kwargs["queryset"] = Project.objects.filter(pk__in=roles.projects_with(request.user))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        issued, token = api_token_issue(user=request.user, **{name: form.cleaned_data[name] for name in ADD_FIELDS})
        # The admin goes on with `obj` (its history entry, the redirect): it becomes the issued row.
        for field in ApiToken._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued, field.attname))
        obj._state.adding, obj._state.db = False, issued._state.db
        request.api_token_made = token  # for response_add's page, and nothing else

    def response_add(self, request, obj, post_url_continue=None):
        return token_shown_once(
            request, self.admin_site, title=f"API token {obj.name}", tokens=[(obj.name, request.api_token_made)],
            explanation="Your new API token. Clients send it as “Authorization: Token <token>”.",
            back_url=reverse("admin:connections_apitoken_change", args=[obj.pk]))

    def save_related(self, request, form, formsets, change):
        pass  # api_token_issue set the projects; there is nothing else to save

    @admin.action(description="Revoke the selected API tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        count = sum(api_token_revoke(token=token) for token in queryset
                    if request.user.has_perm("connections.change_apitoken", token))
        self.message_user(request, f"{count} API token{'' if count == 1 else 's'} revoked.", messages.SUCCESS)

    def get_urls(self):
        revoke = self.admin_site.admin_view(require_POST(self.revoke_view))
        return [path("<int:pk>/revoke/", revoke, name="connections_apitoken_revoke"), *super().get_urls()]

    def revoke_view(self, request, pk):
        token = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_revoke_permission(request, token):
            raise PermissionDenied
        if api_token_revoke(token=token):
            self.message_user(request, f"API token {token.name} ({token.prefix}…) revoked: it no longer works.",
                              messages.SUCCESS)
        return redirect(reverse("admin:connections_apitoken_change", args=[pk]))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["may_revoke"] = bool(obj and obj.revoked_at is None and self.has_revoke_permission(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description="token", ordering="prefix")
    def shown_prefix(self, obj):
        return f"{obj.prefix}…"

    @admin.display(description="limited to")
    def limits(self, obj):
        projects = ", ".join(project.ident for project in obj.projects.all()) or "every project of its user"
        return f"{projects}; read-only" if obj.read_only else projects


def token_shown_once(request, admin_site, *, title: str, tokens: list[tuple[str, str]], explanation: str,
                     back_url: str) -> TemplateResponse:
    """A page that shows new tokens once: never cached, never in a cookie or message."""
    response = TemplateResponse(request, "admin/token_shown_once.html", {
        **admin_site.each_context(request), "title": title, "tokens": tokens, "explanation": explanation,
        "back_url": back_url})
    response["Cache-Control"] = "no-store"
    return response

