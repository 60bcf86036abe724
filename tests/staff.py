"""Staff users for tests: real Django users holding real roles (`api.permissions.ROLES`),
given through the same service as `manage.py staff_role_set`."""

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from api.permissions import staff_role_set


def staff_user(username: str, *roles: str, **fields: Any) -> Any:
    user = get_user_model().objects.create_user(username, is_staff=True, **fields)
    for role in roles:
        staff_role_set(username=username, role=role)
    user.refresh_from_db()
    return user


def staff_client(username: str, *roles: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff_user(username, *roles))
    return client
