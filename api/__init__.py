"""Mailroom's REST API (FastAPI): routers, auth, request/response schemas, error mapping."""
