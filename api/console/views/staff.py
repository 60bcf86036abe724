"""Console pages: staff (being built)."""

from django.http import Http404, HttpRequest, HttpResponse


def margins(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")


def margins_csv(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")


def tenants(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")


def plans(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")


def reconciliation(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")
