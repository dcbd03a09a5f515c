"""devhost: a local stand-in for Azure Functions Core Tools (``func start``).

Core Tools cannot be installed here, so devhost runs the same ``function_app.py`` with the
same semantics: it indexes the app, serves its ASGI app at ``/api/...``, fires timers on their
NCRONTAB schedules and polls storage queues the way ``host.json`` says (batching, polling
back-off, visibility timeout on failure, ``maxDequeueCount`` then ``-poison``). It also starts
Azurite from ``node_modules`` when none is running. Run it with ``python -m devhost``; start
several processes against one Azurite to test scale-out.
"""
