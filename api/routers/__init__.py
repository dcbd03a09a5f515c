"""One router per resource; ``api.app`` mounts them all under ``/api/v1``."""
