"""Every field of the KServe objects in the given YAML files exists in the `kserve` Python
SDK's models (and the Kubernetes client's, for the core types they embed): run with the tool
venv's Python (`.tools/kube`), which has both. The SDK alone ignores unknown fields, so a typo
(`storageURI`, `protocolVersions` under a model) would pass its deserializer silently.

    python strict_kserve.py FILE...   # prints "ok KIND NAME" per object; exit 1 on a problem
"""

from __future__ import annotations

import re
import sys
from typing import Any

import kserve.models
import kubernetes.client.models
import yaml

KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "object": object,
    "datetime": str,
    "date": str,
}


def model(name: str) -> type:
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no model {name} in kserve or kubernetes")


def check(value: Any, kind: str, path: str, problems: list[str]) -> None:
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", kind):  # kserve: list[X]; kubernetes: List[X]
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f"{path}[{i}]", problems)
    elif m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", kind):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping")
            return
        for key, item in value.items():
            check(item, m.group(1) or m.group(2), f"{path}.{key}", problems)
    elif kind in PRIMITIVES:
        if kind == "int" and isinstance(value, str):  # int-or-string fields (ports)
            return
        if not isinstance(value, PRIMITIVES[kind]) or (kind == "int" and value is True):
            problems.append(f"{path}: expected {kind}, got {value!r}")
    else:
        cls = model(kind)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a {kind} mapping")
            return
        by_key = {key: attr for attr, key in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in by_key:
                problems.append(f"{path}.{key}: no such field in {kind}")
            else:
                check(item, cls.openapi_types[by_key[key]], f"{path}.{key}", problems)


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                kind = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
                if kind is None:
                    continue  # a built-in kind: kubernetes-validate's
                problems: list[str] = []
                check(doc, kind, doc["kind"], problems)
                name = doc.get("metadata", {}).get("name", "?")
                for problem in problems:
                    print(f"{path}: {problem}")
                failed |= bool(problems)
                print(f"{'FAILED' if problems else 'ok'} {doc['kind']} {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
