"""Triton's restricted protocols (`--grpc-restricted-protocol`): a group of RPCs answers only
callers that send a header with the right value.

    --grpc-restricted-protocol=model-repository,model-config:admin-key=s3cret

restricts Load, Unload, RepositoryIndex and ModelConfig to calls that carry the metadata
`triton-grpc-protocol-admin-key: s3cret` (Triton's header convention, so tritonclient's
`headers=` works unchanged). The flag may be given once per group of protocols, each with its
own key; a protocol may belong to one group only. A call without the header is refused with
PERMISSION_DENIED and a message naming the header. Triton answers UNAVAILABLE; seqserve does
not, on purpose: its client retries UNAVAILABLE, and a missing key does not heal by retrying.
(tests/serving/test_triton_parity.py checks both against the real Triton binary.)

Triton's protocol groups, and where seqserve's own services fall:
- health: ServerLive, ServerReady, ModelReady, and grpc.health.v1 (Check, Watch);
- metadata: ServerMetadata, ModelMetadata, the typed APIs' ListModels and GetModelInfo, and
  server reflection;
- inference: ModelInfer, ModelStreamInfer, Forecast, Translate, TranslateStream;
- model-config: ModelConfig; model-repository: RepositoryIndex, RepositoryModelLoad/Unload;
- statistics: ModelStatistics; shared-memory, trace, logging: the RPCs seqserve answers
  UNIMPLEMENTED (restricting them still hides that from a caller without the key).

The rules are enforced by the Python server's interceptor and, for the port it owns, by the
native front end before it takes or forwards a call.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HEADER_PREFIX = "triton-grpc-protocol-"
_V2 = "/inference.GRPCInferenceService/"
_FORECAST = "/seqserve.forecast.v1.Forecaster/"
_TRANSLATE = "/seqserve.translate.v1.Translator/"

GROUPS: dict[str, tuple[str, ...]] = {
    "health": (
        _V2 + "ServerLive",
        _V2 + "ServerReady",
        _V2 + "ModelReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ),
    "metadata": (
        _V2 + "ServerMetadata",
        _V2 + "ModelMetadata",
        _FORECAST + "ListModels",
        _FORECAST + "GetModelInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ),
    "inference": (
        _V2 + "ModelInfer",
        _V2 + "ModelStreamInfer",
        _FORECAST + "Forecast",
        _TRANSLATE + "Translate",
        _TRANSLATE + "TranslateStream",
    ),
    "shared-memory": tuple(
        _V2 + f"{kind}SharedMemory{op}"
        for kind in ("System", "Cuda")
        for op in ("Status", "Register", "Unregister")
    ),
    "model-config": (_V2 + "ModelConfig",),
    "model-repository": (
        _V2 + "RepositoryIndex",
        _V2 + "RepositoryModelLoad",
        _V2 + "RepositoryModelUnload",
    ),
    "statistics": (_V2 + "ModelStatistics",),
    "trace": (_V2 + "TraceSetting",),
    "logging": (_V2 + "LogSettings",),
}


@dataclass(frozen=True)
class Rule:
    """What one method needs: `header: value` in the call's metadata."""

    header: str
    value: str
    flag: str = "--grpc-restricted-protocol"

    @property
    def message(self) -> str:
        return (
            f"this protocol is restricted: send the header '{self.header}' with the "
            f"value the server was given ({self.flag})"
        )

    def allows(self, metadata: Iterable[tuple[str, str | bytes]]) -> bool:
        for key, value in metadata:
            if key == self.header:
                got = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(got, self.value.encode())
        return False


def groups(
    specs: Sequence[str], flag: str = "--grpc-restricted-protocol", prefix: str = HEADER_PREFIX
) -> dict[str, Rule]:
    """`<protocols>:<key>=<value>` values -> {protocol group: Rule}, the header being
    `prefix` + key; ValueError naming `flag` and the problem for a malformed value, an unknown
    protocol or one given twice."""
    rules: dict[str, Rule] = {}
    for spec in specs:
        names, sep, assignment = spec.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not names or not key.strip() or not value:
            raise ValueError(f"{flag} {spec!r}: expected <protocol>[,<protocol>...]:<key>=<value>")
        key = key.strip().lower()
        if not all(c.isalnum() or c in "-_." for c in key):
            raise ValueError(
                f"{flag} {spec!r}: the key may hold letters, "
                "digits, '-', '_' and '.' only (it becomes a header name)"
            )
        rule = Rule(prefix + key, value, flag)
        for group in (g.strip() for g in names.split(",")):
            if group not in GROUPS:
                raise ValueError(f"{flag}: unknown protocol {group!r} (known: {', '.join(GROUPS)})")
            if group in rules:
                raise ValueError(
                    f"{flag}: protocol {group!r} is in two groups; each protocol may be "
                    "restricted once"
                )
            rules[group] = rule
    return rules


def parse(specs: Sequence[str]) -> dict[str, Rule]:
    """`--grpc-restricted-protocol` values -> {method path: Rule} (see `groups`)."""
    return {method: rule for group, rule in groups(specs).items() for method in GROUPS[group]}


def native_rules(rules: Mapping[str, Rule]) -> list[tuple[str, str, str, str]]:
    """(method, header, value, message) for the native front end's check."""
    return [(method, r.header, r.value, r.message) for method, r in rules.items()]
