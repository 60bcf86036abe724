from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from api.models import StaffToken
from api.staff_tokens import staff_token_revoke


@admin.register(StaffToken)
class StaffTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "expires_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    readonly_fields = ["user", "prefix", "token_hash", "created_at", "revoked_at"]
    fields = ["user", "name", "prefix", "token_hash", "expires_at", "created_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created with `manage.py staff_token_create`, which shows it once

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[StaffToken]) -> None:
        for token in queryset:
            staff_token_revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)
