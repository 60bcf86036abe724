"""The base of views that answer a file (PDF, CSV) instead of JSON."""

from rest_framework.request import Request
from rest_framework.views import APIView


class FileDownloadView(APIView):
    """A view answering a file (PDF, CSV): a client that accepts only that file's type
    is served, not refused with 406; errors still answer JSON."""

    def perform_content_negotiation(self, request: Request, force: bool = False):  # type: ignore[no-untyped-def]
        return super().perform_content_negotiation(request, force=True)
