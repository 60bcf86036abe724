"""What every app's model forms share: a URL typed without a scheme is taken as https.

Django 5.2 still assumes http for such a URL and warns that 6.0 will assume https; we
take 6.0's rule now. Model forms name `url_formfield` as their `Meta.formfield_callback`;
a ModelAdmin builds its form with its own callback instead, so the admins of those forms
also carry `URL_FORMFIELD_OVERRIDES`."""

from typing import Any

from django import forms
from django.db import models

URL_SCHEME = "https"
URL_FORMFIELD_OVERRIDES: dict[type[models.Field], dict[str, Any]] = {
    models.URLField: {"assume_scheme": URL_SCHEME}
}


def url_formfield(db_field: models.Field, **kwargs: Any) -> forms.Field | None:
    """A model field's form field, URL fields assuming `URL_SCHEME`."""
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", URL_SCHEME)
    return db_field.formfield(**kwargs)
