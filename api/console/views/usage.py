"""Console pages: usage (being built)."""

from django.http import Http404, HttpRequest, HttpResponse


def usage(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")


def usage_csv(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")
