from django.conf import settings
from django.db import models


class StaffToken(models.Model):
    """A staff member's personal API token (`Authorization: Bearer rks_...`): it acts as
    that Django user, so the user's permissions apply unchanged."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_tokens"
    )
    name = models.CharField(max_length=200, blank=True)
    # First characters of the token (e.g. "rks_3xY9aB"), shown so people can tell them apart.
    prefix = models.CharField(max_length=16, db_index=True)
    # SHA-256 hex digest of the whole token; the token itself is never stored.
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The token stops working at this instant (UTC); null means no expiry.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Set once when revoked; a revoked token never works again.
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
