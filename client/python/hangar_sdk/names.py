"""Enum names as the CLI prints them, and filters from plain names."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from hangar.v1 import backend_pb2, node_pb2


def enum_prefix(enum) -> str:
    """``"NODE_EVENT_TYPE_"`` for ``NodeEventType``: what every value name of a Hangar enum starts with."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def enum_name(enum, value: int) -> str:
    """The short name of a value of a Hangar enum, as the CLI and the JSON output print it:
    ``enum_name(node_pb2.NodeState, node.state)`` is ``"READY"``, ``enum_name(node_pb2.NodeEventType,
    event.type)`` is ``"ADDED"``. A value this SDK does not know comes back as its number."""
    prefix = enum_prefix(enum)
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name[len(prefix):] if name.startswith(prefix) else name


def enum_values(enum, names: Iterable[str]) -> list[Any]:
    """The numbers of short (``"ready"``) or full (``"NODE_STATE_READY"``) names; an unknown name
    raises ``ValueError`` naming the known ones."""
    prefix = enum_prefix(enum)
    values = []
    for name in names:
        full = name.upper() if name.upper().startswith(prefix) else prefix + name.upper()
        try:
            values.append(enum.Value(full))
        except ValueError:
            known = ", ".join(n[len(prefix):] for n in enum.keys() if not n.endswith("_UNSPECIFIED"))
            raise ValueError(f"{name!r} is not a {enum.DESCRIPTOR.name}; expected one of {known}") from None
    return values


def node_filter(
    kinds: Sequence[str] = (),
    states: Sequence[str] = (),
    cluster: str = "",
    pool: str = "",
    labels: Optional[Mapping[str, str]] = None,
) -> node_pb2.NodeFilter:
    """A filter from plain names: kinds like ``"DRONE"``, states like ``"READY"``."""
    return node_pb2.NodeFilter(
        kinds=enum_values(node_pb2.NodeKind, kinds),
        states=enum_values(node_pb2.NodeState, states),
        cluster=cluster,
        pool=pool,
        labels=dict(labels or {}),
    )


def backend_filter(states: Sequence[str] = (), drone_id: str = "", key_namespace: str = "", cluster: str = "",
                   pool: str = "", labels: Optional[Mapping[str, str]] = None,
                   key_prefix: str = "") -> backend_pb2.BackendFilter:
    """A filter from plain names: states like ``"READY"``; ``labels`` must all match exactly;
    ``key_prefix`` matches the start of the key's name (backends without a key never match it)."""
    return backend_pb2.BackendFilter(states=enum_values(backend_pb2.BackendState, states), drone_id=drone_id,
                                     key_namespace=key_namespace, cluster=cluster, pool=pool,
                                     labels=dict(labels or {}), key_prefix=key_prefix)
