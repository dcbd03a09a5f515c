"""The Functions app: the REST API as one ASGI function, plus the trigger Blueprints."""

import azure.functions as func
from api.app import app as api_app

from functions import BLUEPRINTS

app = func.AsgiFunctionApp(app=api_app, http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in BLUEPRINTS:
    app.register_functions(blueprint)
