"""skaffold.yaml: parses, names only files that exist, and wires image, chart and example together.

No skaffold binary or cluster runs here; this proves the configuration is coherent: the built image
is the one the chart deploys (and so the one store pods get), the chart is deployed before the
example EventStore, and the example lands in the namespace the operator watches.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def configs() -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if doc]
    assert docs
    return docs


def image_key(image: str) -> str:
    """Skaffold's template-variable suffix for an image name (non-alphanumerics become `_`)."""
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def releases(configs: list[dict]) -> list[dict]:
    return [r for c in configs for r in c.get("deploy", {}).get("helm", {}).get("releases", [])]


def test_every_document_is_a_v4_skaffold_config(configs):
    names = [c["metadata"]["name"] for c in configs]
    assert len(names) == len(set(names))
    for config in configs:
        assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"]), config["apiVersion"]
        assert config["kind"] == "Config"
        assert set(config) <= {"apiVersion", "kind", "metadata", "requires", "build", "test", "manifests",
                               "deploy", "portForward", "resourceSelector", "verify", "profiles"}


def test_every_named_path_exists(configs):
    named = []
    for config in configs:
        for artifact in config.get("build", {}).get("artifacts", []):
            context = ROOT / artifact.get("context", ".")
            named += [context, context / artifact.get("docker", {}).get("dockerfile", "Dockerfile")]
        for release in releases([config]):
            named += [ROOT / release["chartPath"], ROOT / release["chartPath"] / "Chart.yaml"]
            named += [ROOT / f for f in release.get("valuesFiles", [])]
        for pattern in config.get("manifests", {}).get("rawYaml", []):
            matches = list(ROOT.glob(pattern))
            assert matches, f"rawYaml {pattern} matches nothing"
            named += matches
    assert named
    missing = [str(p.relative_to(ROOT)) for p in named if not p.exists()]
    assert not missing, f"skaffold.yaml names missing paths: {missing}"


def test_built_image_is_what_the_chart_deploys(configs):
    artifacts = [a for c in configs for a in c.get("build", {}).get("artifacts", [])]
    assert len(artifacts) == 1, "one image for node and operator"
    image = artifacts[0]["image"]
    chart_values = yaml.safe_load((ROOT / "charts" / "evstore-operator" / "values.yaml").read_text())
    assert image == chart_values["image"]["repository"]
    (release,) = releases(configs)
    templates = release["setValueTemplates"]
    key = image_key(image)
    assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
    assert templates["image.tag"].startswith(f"{{{{.IMAGE_TAG_{key}}}}}")


def test_chart_deploys_before_the_example_in_the_watched_namespace(configs):
    chart_index = next(i for i, c in enumerate(configs) if releases([c]))
    example_index = next(i for i, c in enumerate(configs) if c.get("manifests", {}).get("rawYaml"))
    assert chart_index < example_index, "the chart installs the CRD, so it must deploy first"
    (release,) = releases(configs)
    example_config = configs[example_index]
    assert example_config["deploy"]["kubectl"]["defaultNamespace"] == release["namespace"]
    for pattern in example_config["manifests"]["rawYaml"]:
        for path in ROOT.glob(pattern):
            for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
                assert doc["apiVersion"] == "evstore.io/v1alpha1" and doc["kind"] == "EventStore", path
                assert doc["metadata"].get("namespace", release["namespace"]) == release["namespace"]
