from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Metering"

    def ready(self) -> None:
        # Registers metering's Celery tasks under their names in every process that sets
        # Django up, not only in a worker (which autodiscovers them); imported here, once
        # the app registry is ready, because the tasks' services import models.
        import metering.tasks  # noqa: F401
