"""Blob access for exported delivery logs and large templates, next to ``core.storage``.

Exports are written once per closed job and read by people (portal, Storage Explorer),
so they are plain CSV/JSON blobs named ``{tenant}/{job}.csv`` in the ``delivery-logs``
container. Templates too large for a table column live in ``templates``
(``core.template_store``). Like ``Storage``, a ``namespace`` prefixes the container so tests
stay isolated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from core.errors import NotFound, StorageError
from core.storage import Storage

DELIVERY_LOGS = "delivery-logs"
TEMPLATES = "templates"


class BlobStore:
    """One container of one account: put, read, list and delete blobs."""

    def __init__(self, connection_string: str, container: str = DELIVERY_LOGS, namespace: str = "") -> None:
        self._service = BlobServiceClient.from_connection_string(connection_string)
        self.container = f"{namespace}-{container}" if namespace else container
        self._client = self._service.get_container_client(self.container)
        self._ready = False

    def ensure(self) -> None:
        """Create the container if missing (idempotent, once per object)."""
        if self._ready:
            return
        try:
            self._client.create_container()
        except ResourceExistsError:
            pass
        except AzureError as err:
            raise StorageError(f"cannot create container {self.container}: {type(err).__name__}") from err
        self._ready = True

    def put(self, name: str, data: bytes | Iterable[bytes], content_type: str) -> None:
        """Write (or overwrite) a blob; ``data`` may be a stream of chunks (flat memory)."""
        self.ensure()
        try:
            self._client.upload_blob(
                name, data, overwrite=True, content_settings=ContentSettings(content_type=content_type)
            )
        except AzureError as err:
            raise StorageError(f"blob write failed: {type(err).__name__}") from err

    def read(self, name: str) -> bytes:
        try:
            return self._client.download_blob(name).readall()
        except ResourceNotFoundError as err:
            raise NotFound(f"no blob {name}") from err
        except AzureError as err:
            raise StorageError(f"blob read failed: {type(err).__name__}") from err

    def exists(self, name: str) -> bool:
        try:
            return self._client.get_blob_client(name).exists()
        except AzureError as err:
            raise StorageError(f"blob check failed: {type(err).__name__}") from err

    def names(self, prefix: str = "") -> Iterator[str]:
        try:
            for blob in self._client.list_blobs(name_starts_with=prefix or None):
                yield blob.name
        except ResourceNotFoundError:
            return
        except AzureError as err:
            raise StorageError(f"blob listing failed: {type(err).__name__}") from err

    def delete(self, name: str) -> None:
        try:
            self._client.delete_blob(name)
        except ResourceNotFoundError:
            return
        except AzureError as err:
            raise StorageError(f"blob delete failed: {type(err).__name__}") from err


_stores: dict[tuple[str, str, str], BlobStore] = {}


def _container(storage: Storage, container: str) -> BlobStore:
    key = (storage.connection_string, storage.namespace, container)
    if key not in _stores:
        _stores[key] = BlobStore(storage.connection_string, container, storage.namespace)
    return _stores[key]


def log_blob_name(tenant_id: str, job_id: str) -> str:
    """A closed job's exported delivery log (the erasure rewrites it, so it lives here)."""
    return f"{tenant_id}/{job_id}.csv"


def summary_blob_name(tenant_id: str, job_id: str) -> str:
    """A closed job's summary JSON beside its CSV."""
    return f"{tenant_id}/{job_id}.summary.json"


def delivery_logs(storage: Storage) -> BlobStore:
    """The container of exported delivery logs on ``storage``'s account and namespace."""
    return _container(storage, DELIVERY_LOGS)


def templates(storage: Storage) -> BlobStore:
    """The container of templates too large for their table column (``core.template_store``)."""
    return _container(storage, TEMPLATES)
