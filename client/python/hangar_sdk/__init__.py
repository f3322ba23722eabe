"""Python SDK for Hangar, over the whole ``hangar.v1`` API.

The generated modules (``hangar.v1.node_pb2``, ``hangar.v1.backend_pb2`` and friends, built from
``proto/`` with grpcio-tools) are the whole API; this package adds what every caller would
otherwise write: target parsing and credentials, listing across pages, watches that resume,
typed backends, a node cache, and errors that carry Hangar's stable reason strings.

    from hangar_sdk import Client
    with Client("http://127.0.0.1:7070") as client:
        print([node.name for node in client.list_nodes(kinds=["drone"], states=["ready"])])
        backend = client.connect("docs/doc-1", image="hangar-demo")   # READY, with .url and .token
        client.terminate(backend.id, wait=True)

- :class:`Client` (blocking) and :class:`hangar_sdk.aio.Client` (asyncio), the same methods;
- :class:`Backend`, :class:`BackendStatus`, :class:`BackendState`, :class:`BackendKey`;
- ``watch_nodes`` and ``watch_backends``: list + watch as one stream that resumes after a
  dropped stream or a controller restart and lists again after OUT_OF_RANGE
  (:class:`NodeWatchEvent`, :class:`BackendWatchEvent`, :class:`WatchEventType`);
- :class:`NodeCache`: list + watch kept current in a background thread, with ``wait_for``
  (``hangar_sdk.aio.NodeCache`` in an asyncio task; :class:`NodeStore` to feed one yourself);
- :class:`HangarError`, :class:`BackendTerminated`; :func:`enum_name` for enum short names.

A controller with TLS and client certificates, and a bearer token (docs/security.md):

    client = Client("https://ctl.example.com:7070", tls_ca="ca.pem", tls_cert="alice.pem",
                    tls_key="alice.key", token_file="/run/secrets/hangar-token")
    client = Client.from_env()  # HANGAR_CONTROLLER, HANGAR_TOKEN[_FILE], HANGAR_TLS_CA/CERT/KEY
"""

from hangar.v1 import backend_pb2, node_pb2

from .cache import NodeCache, NodeStore
from .client import Client
from .errors import BackendTerminated, HangarError
from .names import enum_name
from .types import Backend, BackendKey, BackendState, BackendStatus
from .watch import BackendWatchEvent, BackendWatchEventType, NodeWatchEvent, NodeWatchEventType, RetryPolicy, WatchEventType

__all__ = [
    "Backend",
    "BackendKey",
    "BackendState",
    "BackendStatus",
    "BackendTerminated",
    "BackendWatchEvent",
    "BackendWatchEventType",
    "Client",
    "HangarError",
    "NodeCache",
    "NodeStore",
    "NodeWatchEvent",
    "NodeWatchEventType",
    "RetryPolicy",
    "WatchEventType",
    "backend_pb2",
    "enum_name",
    "node_pb2",
]
