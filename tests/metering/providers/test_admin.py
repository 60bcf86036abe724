"""The admin pages of provider accounts and imported reports: they render for staff who
hold the permission, refuse staff who do not, and imported data is read-only."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from metering.models import (
    ProviderAccount,
    ProviderBucketRevision,
    ProviderCostBucket,
    ProviderReportFetch,
    ProviderUsageBucket,
    Route,
)
from metering.providers.importer import provider_reports_import
from tests.fakes.provider_admin import ServedEvent
from tests.metering.conftest import reasoner_route
from tests.metering.providers.conftest import DAY, OPENAI_KEY, at
from tests.staff import staff_user

pytestmark = pytest.mark.django_db

REPORT_MODELS = {
    "providerreportfetch": ProviderReportFetch,
    "providerusagebucket": ProviderUsageBucket,
    "providercostbucket": ProviderCostBucket,
    "providerbucketrevision": ProviderBucketRevision,
}


@pytest.fixture
def imported(openai_account, openai_fake) -> ProviderAccount:  # type: ignore[no-untyped-def]
    window = {"since": DAY, "until": DAY + dt.timedelta(days=2)}
    provider_reports_import(account=openai_account, **window)
    openai_fake.add_usage(ServedEvent(at(0, 2, 30), "gpt-r", "key_b", 5, 0, 0, 1, 0))
    provider_reports_import(account=openai_account, **window)  # one revision at least
    return openai_account


def superuser() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "r@x.io", "pw"))
    return client


def staff_with(*codenames: str) -> Client:
    user = staff_user(f"viewer{len(codenames)}")
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="metering", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def test_report_pages_render_read_only_for_a_superuser(imported: ProviderAccount) -> None:
    client = superuser()
    for name, model in REPORT_MODELS.items():
        listing = client.get(f"/admin/metering/{name}/")
        assert listing.status_code == 200, name
        assert f"/admin/metering/{name}/add/".encode() not in listing.content  # no "add"
        obj = model.objects.first()
        detail = client.get(f"/admin/metering/{name}/{obj.pk}/change/")
        assert detail.status_code == 200, name
        assert b'name="_save"' not in detail.content  # read-only view
        assert client.post(f"/admin/metering/{name}/{obj.pk}/delete/").status_code == 403


def test_fetch_page_shows_the_body_as_received(imported: ProviderAccount) -> None:
    fetch = ProviderReportFetch.objects.filter(report="cost").first()
    page = superuser().get(f"/admin/metering/providerreportfetch/{fetch.pk}/change/")
    assert page.status_code == 200
    assert b"organization.costs.result" in page.content
    assert OPENAI_KEY.encode() not in page.content


def test_staff_need_the_view_permission(imported: ProviderAccount) -> None:
    assert staff_with().get("/admin/metering/providerreportfetch/").status_code == 403
    client = staff_with("view_providerreportfetch", "view_provideraccount")
    assert client.get("/admin/metering/providerreportfetch/").status_code == 200
    assert client.get("/admin/metering/providerusagebucket/").status_code == 403
    account_page = client.get(f"/admin/metering/provideraccount/{imported.pk}/change/")
    assert account_page.status_code == 200
    assert b'name="_save"' not in account_page.content  # view only without change_


def test_account_admin_edits_with_the_commands_rules(imported: ProviderAccount) -> None:
    client = superuser()
    page = client.get(f"/admin/metering/provideraccount/{imported.pk}/change/")
    assert page.status_code == 200
    assert b"last_error" in page.content or b"Last error" in page.content
    form = {
        "name": "oai-main",
        "provider": "openai",
        "admin_key_env": "sk-admin-pasted-the-key",
        "admin_base_url": "http://gw:8080/v1/",
        "model_map": "{}",
        "is_active": "on",
    }
    refused = client.post(f"/admin/metering/provideraccount/{imported.pk}/change/", form)
    assert refused.status_code == 200
    assert b"NAME of an environment variable" in refused.content
    assert b"sk-admin-pasted-the-key" not in refused.content.split(b"errorlist")[1][:300]
    saved = client.post(
        f"/admin/metering/provideraccount/{imported.pk}/change/",
        form | {"admin_key_env": "OAI_ADMIN_2"},
    )
    assert saved.status_code == 302
    imported.refresh_from_db()
    assert imported.admin_key_env == "OAI_ADMIN_2"
    assert imported.admin_base_url == "http://gw:8080/v1"


def test_route_admin_shows_the_provider_account(imported: ProviderAccount) -> None:
    reasoner_route(imported)
    client = superuser()
    listing = client.get("/admin/metering/route/")
    assert listing.status_code == 200
    assert b"oai-main" in listing.content and b"key_a" in listing.content
    route = Route.objects.get(alias="reasoner")
    page = client.get(f"/admin/metering/route/{route.pk}/change/")
    assert b'name="provider_account"' in page.content
    assert b'name="upstream_key_id"' in page.content


def _as(username: str, role: str) -> Client:
    client = Client()
    client.force_login(staff_user(username, role))
    return client


def test_the_operator_role_manages_accounts_and_reads_the_reports(
    imported: ProviderAccount,
) -> None:
    """Review S13: the operator points Reckon at its provider accounts in the admin."""
    client = _as("ops", "operator")
    assert client.get("/admin/metering/provideraccount/add/").status_code == 200
    created = client.post(
        "/admin/metering/provideraccount/add/",
        {"name": "oai-2", "provider": "openai", "admin_key_env": "OAI_2", "model_map": "{}"},
    )
    assert created.status_code == 302
    assert ProviderAccount.objects.filter(name="oai-2", is_active=False).exists()
    for name in REPORT_MODELS:
        assert client.get(f"/admin/metering/{name}/").status_code == 200, name
    assert client.post(f"/admin/metering/provideraccount/{imported.pk}/delete/").status_code == 403


@pytest.mark.parametrize("role", ["finance-read", "finance-write"])
def test_finance_roles_view_accounts_buckets_and_revisions_only(
    imported: ProviderAccount, role: str
) -> None:
    client = _as(f"fin-{role}", role)
    for name in ("provideraccount", "providerusagebucket", "providercostbucket"):
        assert client.get(f"/admin/metering/{name}/").status_code == 200, name
    assert client.get("/admin/metering/providerbucketrevision/").status_code == 200
    assert client.get("/admin/metering/providerreportfetch/").status_code == 403
    assert client.get("/admin/metering/provideraccount/add/").status_code == 403
    page = client.get(f"/admin/metering/provideraccount/{imported.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content


def test_the_admin_refuses_a_provider_change_while_routes_of_the_old_one_point_at_it(
    imported: ProviderAccount,
) -> None:
    """The same check as route_set and provider_account_set (one function)."""
    form = {
        "name": "oai-main",
        "provider": "anthropic",
        "admin_key_env": "OAI_ADMIN",
        "admin_base_url": "",
        "model_map": "{}",
        "is_active": "on",
    }
    client = superuser()
    reasoner_route(imported, upstream_key_id="")
    refused = client.post(f"/admin/metering/provideraccount/{imported.pk}/change/", form)
    assert refused.status_code == 200
    assert b"openai routes cannot belong to it" in refused.content
    imported.refresh_from_db()
    assert imported.provider == "openai"
    Route.objects.filter(alias="reasoner").update(provider_account=None)
    saved = client.post(f"/admin/metering/provideraccount/{imported.pk}/change/", form)
    assert saved.status_code == 302
    imported.refresh_from_db()
    assert imported.provider == "anthropic"
