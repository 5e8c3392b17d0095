"""Run a container of an operator-built pod template as a local process: what the kubelet would give it.

`container_environment` resolves `envFrom` ConfigMaps, `env` values, `valueFrom` (configMapKeyRef,
secretKeyRef, fieldRef) and `$(VAR)` references (only to variables defined earlier, as Kubernetes
does). `mounted_args` rewrites the container's args so that paths under a Secret volume's mountPath
point at files written to a local directory from the Secret's items. Nothing here is evstore-specific,
so the test runs exactly what the manifests say.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def container_environment(container: Mapping[str, Any], *, configmaps: Mapping[str, Mapping[str, str]],
                          secrets: Mapping[str, Mapping[str, str]], fields: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in container.get("env") or ():
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            env[item["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            env[item["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[item["name"]] = configmaps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        else:
            raise AssertionError(f"unsupported valueFrom {ref}")
    return env


def mounted_args(pod_spec: Mapping[str, Any], container: Mapping[str, Any], *,
                 secrets: Mapping[str, Mapping[str, str]], root: Path,
                 configmaps: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """The container's args with each Secret and ConfigMap volume written under `root` and its
    mountPath replaced (rewrite a ConfigMap's file later to play the kubelet updating it)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or ()}
    args = list(container.get("args") or ())
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(mount["name"], {})  # "data" is a volumeClaimTemplate
        if "secret" in volume:
            source, values = volume["secret"], secrets[volume["secret"]["secretName"]]
        elif "configMap" in volume:
            source, values = volume["configMap"], (configmaps or {})[volume["configMap"]["name"]]
        else:
            continue
        directory = root / mount["name"]
        directory.mkdir(parents=True, exist_ok=True)
        for item in source.get("items") or [{"key": k, "path": k} for k in values]:
            target = directory / item["path"]
            target.write_text(values[item["key"]])
            target.chmod(source.get("defaultMode", 0o644))
        args = [a.replace(mount["mountPath"], str(directory)) for a in args]
    return args
