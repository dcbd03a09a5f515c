"""The Functions app: the REST API as one ASGI function, plus the trigger Blueprints."""

import azure.functions as func

from core.logging_setup import configure_host_logging
from core.startup import checked_settings

settings = checked_settings()  # a bad setting stops the host here, with one line naming it
configure_host_logging(settings.log_format, settings.log_level)


def _function_app() -> func.AsgiFunctionApp:
    """Imports the API and the Blueprints only once the settings are known to be good."""
    from api.app import app as api_app
    from functions import BLUEPRINTS

    function_app = func.AsgiFunctionApp(app=api_app, http_auth_level=func.AuthLevel.ANONYMOUS)
    for blueprint in BLUEPRINTS:
        function_app.register_functions(blueprint)
    return function_app


app = _function_app()
