from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from api import views

urlpatterns = [
    path("usage/records", views.UsageRecordListView.as_view(), name="usage-records"),
    path("usage/summary", views.UsageSummaryView.as_view(), name="usage-summary"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
]
