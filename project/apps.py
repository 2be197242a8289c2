from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The demo site itself: its templates and the ``demo`` management command."""

    name = "project"
    verbose_name = "Demo site"
