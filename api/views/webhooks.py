"""The Stripe webhook endpoint: the event is stored raw first, then processed by a task
(billing.stripe_webhooks.stripe_event_receive decides and enqueues)."""

from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.stripe_webhooks import stripe_event_receive


@method_decorator(csrf_exempt, name="dispatch")
class StripeWebhookView(APIView):
    """Stripe calls this; the signature is the authentication."""

    authentication_classes: list = []  # type: ignore[type-arg]
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        event, created = stripe_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
        # 200 for a rejected (malformed) event too: Stripe retries anything else forever.
        return Response(
            {
                "received": True,
                "event": event.event_id,
                "duplicate": not created,
                "status": event.status,
            }
        )
