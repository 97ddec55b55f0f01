"""dockerfiles/*.Dockerfile, .dockerignore and `make images`, checked statically.

The CI machine has no Docker engine, so nothing here builds an image. Instead the Dockerfiles are
parsed (dockerfile-parse) and held against what the deployments reference: the chart's image,
user and commands, BASE_IMAGE and the compiled pipeline IR, the CLI's real commands, the build
context as .dockerignore leaves it, and the dependency subset the agent image installs.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.unit.dependencies import NOT_ON_A_DEVICE, distributions, run_with_only
from tinymlops.cli import main as cli
from tinymlops_pipelines.images import BASE_IMAGE

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse (test extra) reads Dockerfiles")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "dockerfiles"
CHART = ROOT / "helm" / "tinymlops"
COMPILED = ROOT / "pipelines" / "tinymlops_pipelines" / "compiled"
IMAGES = ("operator", "agent", "pipeline-base")
# Base images: a registry path, a tag that names a patch release, and optionally a digest.
PINNED = re.compile(r"^(?P<name>[\w./-]+):(?P<major>\d+)\.(?P<minor>\d+)\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")
# The modules the agent runs: its CLI, the sideload install and slots, and the online loop.
AGENT_MODULES = ("tinymlops.cli", "tinymlops.commands.agent", "tinymlops.agent.install", "tinymlops.agent.slots",
                 "tinymlops.agent.online")


# --- reading the sources of truth ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str  # after ARG substitution
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def arg_defaults(self) -> dict[str, str]:
        return _arg_defaults(self.values("ARG"))


def _arg_defaults(values: list[str]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for value in values:
        name, sep, default = value.partition("=")
        if sep:
            defaults[name.strip()] = " ".join(shlex.split(default))
    return defaults


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def stages(image: str) -> list[Stage]:
    """The build stages of dockerfiles/<image>.Dockerfile, each FROM resolved with the ARG defaults before it."""
    parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO((DOCKER / f"{image}.Dockerfile").read_bytes()))
    global_args: list[str] = []
    result: list[Stage] = []
    for entry in parser.structure:
        instruction, value = entry["instruction"], entry["value"]
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=_substitute(words[0], _arg_defaults(global_args)), name=name))
        elif not result:
            if instruction == "ARG":
                global_args.append(value)
        else:
            result[-1].instructions.append((instruction, value))
    return result


def final(image: str) -> Stage:
    return stages(image)[-1]


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def chart_image() -> str:
    """The image the chart's templates run, spelled as _helpers.tpl's tinymlops.image spells it."""
    image = chart_values()["image"]
    return f"{image['repository']}:{image['tag'] or app_version()}"


def tag_of(reference: str) -> str:
    return reference.rsplit(":", 1)[1]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def sdk_version() -> str:
    found: set[str] = {m for path in COMPILED.glob("*.yaml")
                       for m in re.findall(r"(?m)^sdkVersion: kfp-(\S+)$", path.read_text())}
    assert len(found) == 1, f"one kfp SDK version across the compiled IR, found {found}"
    return found.pop()


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the COPY/ADD instructions that read the build context (not another stage)."""
    sources: list[str] = []
    for instruction, value in stage.instructions:
        if instruction not in ("COPY", "ADD"):
            continue
        words = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


# --- .dockerignore, with Docker's rules: root-relative patterns, ** across directories, ! re-includes, and a
# --- pattern that matches a directory excludes everything below it.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((include, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for include, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not include
    return excluded


# --- `make images`, dry run ----------------------------------------------------------------------------------


@dataclass
class Build:
    dockerfile: str
    tags: list[str]
    build_args: dict[str, str]
    platforms: list[str]


def make_images_dry_run() -> list[Build]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "--no-print-directory", "-n", "images"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    tokens = shlex.split(out.replace("\\\n", " "))
    builds = []
    for i, token in enumerate(tokens):
        if token != "build" or tokens[i - 1] not in ("docker", "buildx"):
            continue
        words = tokens[i + 1: tokens.index(".", i)]
        options: dict[str, list[str]] = {}
        for flag, value in zip(words, words[1:], strict=False):
            if flag.startswith("-"):
                options.setdefault(flag, []).append(value)
        builds.append(Build(
            dockerfile=options["-f"][0], tags=options.get("-t", []),
            build_args=dict(a.split("=", 1) for a in options.get("--build-arg", [])),
            platforms=[p for spec in options.get("--platform", []) for p in spec.split(",")],
        ))
    return builds


# --- the tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_the_charts_non_root_user(image: str) -> None:
    pod = chart_values()["podSecurityContext"]
    users = final(image).values("USER")
    assert users, f"{image}: the final stage sets no USER and would run as root"
    # Numeric: the kubelet can only verify runAsNonRoot against a numeric uid, never against a name.
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{image}: USER {users[-1]} is not numeric uid:gid"
    assert int(uid) != 0 and pod["runAsNonRoot"] is True
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]), (
        f"{image}: USER {users[-1]} differs from the chart's podSecurityContext "
        f"{pod['runAsUser']}:{pod['runAsGroup']}")


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned_to_a_patch_release(image: str) -> None:
    python = str(pyproject()["tool"]["mypy"]["python_version"])
    all_stages = stages(image)
    names = {s.name for s in all_stages if s.name}
    for stage in all_stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"{image}: FROM {stage.base} has no ARG default"
        match = PINNED.match(stage.base)
        assert match, f"{image}: FROM {stage.base} is not pinned to a patch release tag (e.g. python:3.11.14-slim)"
        assert ":latest" not in stage.base
        # The Python the tests and the type checker run is the one the images ship.
        if match["name"].endswith("python"):
            assert f"{match['major']}.{match['minor']}" == python, f"{image}: {stage.base} is not Python {python}"


def test_every_image_shares_one_base() -> None:
    # One Python patch release everywhere: a venv built on one base runs on the same base only.
    bases = {s.base for image in IMAGES for s in stages(image) if s.base not in {t.name for t in stages(image)}}
    assert len(bases) == 1, f"the images use different bases: {sorted(bases)}"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_takes_only_the_built_venv(image: str) -> None:
    all_stages = stages(image)
    assert len(all_stages) >= 2, f"{image}: not a multi-stage build"
    last = all_stages[-1]
    assert copy_sources(last) == [], f"{image}: the final stage copies from the build context, not the builder"
    copies = last.values("COPY")
    assert copies and all(c.startswith("--from=") for c in copies)
    env = dict(_env_pairs(last))
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{image}: the venv's tinymlops and python3 come first"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PIP_NO_CACHE_DIR") == "1"


def _env_pairs(stage: Stage) -> list[tuple[str, str]]:
    pairs = []
    for value in stage.values("ENV"):
        for word in shlex.split(value):
            name, _, setting = word.partition("=")
            pairs.append((name, setting))
    return pairs


def test_image_versions_come_from_the_chart_and_the_pipeline() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    expected = {"operator": app_version(), "agent": app_version(), "pipeline-base": tag_of(BASE_IMAGE)}
    for image, version in expected.items():
        stage = final(image)
        assert stage.arg_defaults().get("VERSION") == version, f"{image}: ARG VERSION default is not {version}"
        labels = _labels(stage)
        assert _substitute(labels["org.opencontainers.image.version"], {"VERSION": version}) == version
        assert labels["org.opencontainers.image.source"] in chart["sources"]
        assert labels["org.opencontainers.image.licenses"] == pyproject()["project"]["license"]
        assert labels["org.opencontainers.image.title"]
    # The executor in the pipeline image reads what the kfp SDK of the committed IR wrote.
    builder = stages("pipeline-base")[0]
    assert builder.arg_defaults().get("KFP_VERSION") == sdk_version(), (
        "dockerfiles/pipeline-base.Dockerfile: ARG KFP_VERSION differs from the compiled IR's sdkVersion")
    # The image tagged appVersion installs this project: the two versions are one.
    assert app_version() == pyproject()["project"]["version"]


def _labels(stage: Stage) -> dict[str, str]:
    labels = {}
    for value in stage.values("LABEL"):
        for word in shlex.split(value):
            name, _, setting = word.partition("=")
            labels[name] = setting
    return labels


def test_make_images_builds_the_names_the_deployments_reference() -> None:
    builds = make_images_dry_run()
    by_file: dict[str, list[Build]] = {}
    for build in builds:
        by_file.setdefault(build.dockerfile, []).append(build)
    every = {f"dockerfiles/{p.name}" for p in DOCKER.glob("*.Dockerfile")}
    assert set(by_file) == every, "make images builds every image"

    registry = chart_values()["image"]["repository"].rsplit("/", 1)[0]
    expected = {
        "dockerfiles/operator.Dockerfile": (chart_image(), {"VERSION": app_version()}),
        "dockerfiles/pipeline-base.Dockerfile": (
            BASE_IMAGE, {"VERSION": tag_of(BASE_IMAGE), "KFP_VERSION": sdk_version()}),
        "dockerfiles/agent.Dockerfile": (f"{registry}/agent:{app_version()}", {"VERSION": app_version()}),
    }
    for dockerfile, (tag, args) in expected.items():
        for build in by_file[dockerfile]:
            assert build.tags == [tag], f"{dockerfile}: make images tags {build.tags}, the deployments name {tag}"
            assert {k: build.build_args.get(k) for k in args} == args, f"{dockerfile}: {build.build_args}"
    multi_arch = [b for b in by_file["dockerfiles/agent.Dockerfile"] if b.platforms]
    assert multi_arch and {"linux/amd64", "linux/arm64"} <= set(multi_arch[0].platforms)


def test_make_images_without_a_docker_engine_says_why(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # A docker CLI that reaches no engine (as on CI): deterministic, and never starts a real build.
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["make", "--no-print-directory", "images"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode != 0
    assert "no Docker engine: `make images` needs docker" in result.stderr
    assert "tests/unit/test_images.py" in result.stderr


def test_compiled_pipeline_names_exactly_base_image() -> None:
    paths = sorted(COMPILED.glob("*.yaml"))
    assert paths
    for path in paths:
        images = set(re.findall(r"(?m)^\s*image:\s*(\S+)\s*$", path.read_text()))
        assert images == {BASE_IMAGE}, f"{path.relative_to(ROOT)} names {images}, images.py says {BASE_IMAGE}"


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_are_in_the_build_context(image: str) -> None:
    rules = dockerignore()
    sources = [s for stage in stages(image) for s in copy_sources(stage)]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{image}: COPY {source}: no such path in the repository"
        assert not ignored(source, rules), f"{image}: COPY {source} is excluded by .dockerignore"
        # Nothing the package build needs may vanish below a copied directory (sources, schemas, the IR).
        if path.is_dir():
            for file in path.rglob("*"):
                relative = file.relative_to(ROOT).as_posix()
                if file.suffix in (".py", ".json", ".yaml", ".typed") and "__pycache__" not in file.parts:
                    assert not ignored(relative, rules), f"{image}: .dockerignore drops {relative}"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    rules = dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", ".tinymlops/cluster/kubeconfig", "benchmarks/results/x.json",
                 "tests/unit/test_images.py", "tinymlops/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v",
                 ".mypy_cache/3.11/x.json", ".ruff_cache/x", "tinymlops.egg-info/PKG-INFO"):
        assert ignored(path, rules), f".dockerignore lets {path} into the build context"


def _help(args: list[str]) -> str:
    """`tinymlops ARGS --help`, up to the first option: the command exists or this fails."""
    command = [a for a in args[: next((i for i, a in enumerate(args) if a.startswith("-")), len(args))]]
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, f"`tinymlops {' '.join(command)}` is not a command: {result.output}"
    return result.output


def test_the_charts_commands_exist_in_the_cli() -> None:
    gateway = chart_values()["gateway"]["command"]
    assert gateway[0] == "tinymlops"
    for option in ("--host", "--port"):  # the chart appends them
        assert option in _help(gateway[1:])
    template = (CHART / "templates" / "operator-deployment.yaml").read_text()
    block = re.search(r"command:\n((?:\s+- .*\n)+)", template)
    assert block, "operator-deployment.yaml has no command list"
    operator = [line.strip()[2:] for line in block.group(1).splitlines() if "{{" not in line.split("=")[0]]
    assert operator[0] == "tinymlops"
    help_text = _help(operator[1:])
    for word in operator[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in help_text, f"`tinymlops {' '.join(operator[1:3])}` has no {word}"


@pytest.mark.parametrize("image", IMAGES)
def test_image_commands_exist_in_the_cli(image: str) -> None:
    stage = final(image)
    entrypoint = [json.loads(v) for v in stage.values("ENTRYPOINT")]
    command = [json.loads(v) for v in stage.values("CMD")]
    if image == "pipeline-base":
        # KFP sets every task's command (sh -ec ... python3 -m kfp.dsl.executor_main); an entrypoint would wrap it.
        assert entrypoint == []
        return
    assert entrypoint[-1] == ["tinymlops"], f"{image}: ENTRYPOINT is not the tinymlops CLI"
    assert command, f"{image}: no default CMD"
    _help(command[-1])


@pytest.mark.parametrize("image", IMAGES)
def test_package_installs_leave_no_caches(image: str) -> None:
    for stage in stages(image):
        env = dict(_env_pairs(stage))
        for run in stage.values("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run, f"{image}: apt-get install without --no-install-recommends"
                assert "rm -rf /var/lib/apt/lists" in run, f"{image}: the apt lists stay in the layer"
            if "pip install" in run:
                assert "--no-cache-dir" in run or env.get("PIP_NO_CACHE_DIR") == "1", f"{image}: pip keeps its cache"


def installed_extras(image: str) -> set[str]:
    """The extras of the project (`pip install ".[a,b]"`) the image's builder installs."""
    found: set[str] = set()
    for run in stages(image)[0].values("RUN"):
        for match in re.finditer(r"""pip install [^&|;]*?["']?\.\[([\w,-]+)\]["']?""", run):
            found |= set(match.group(1).split(","))
    return found


def test_each_image_installs_the_extras_of_its_commands() -> None:
    # The chart runs `operator run` and `gateway run` from the operator image; KFP tasks build variants (TVM
    # included, tuned when an EdgeModel asks: tune; emx-onnx-cgen's int8 MCU variants: mcu) and embed licensees'
    # watermarks in pipeline-base; devices run the agent, with the core dependencies alone.
    assert installed_extras("operator") == {"operator", "gateway"}
    # privacy: OpenDP for drift histograms; protection: scipy for the extraction monitor; licensing: pyseto to verify
    # licence tokens and pymerkle to answer receipt audits; wasm: wasmtime for the variants' pre/post modules
    assert installed_extras("agent") == {"agent", "licensing", "privacy", "protection", "wasm"}
    assert installed_extras("pipeline-base") == {"mcu", "pipelines", "tune", "tvm", "watermark"}
    assert distributions(installed_extras("agent")) & NOT_ON_A_DEVICE == set()


def test_agent_runs_with_only_its_extra() -> None:
    """The agent image installs tinymlops[agent]: its modules and default command must not need more."""
    command = json.loads(final("agent").values("CMD")[-1])
    state = command.index("--state-dir") + 1
    command[state] = "{scratch}"  # the image's state directory, empty
    result = run_with_only(installed_extras("agent"), AGENT_MODULES, command)
    assert result.returncode == 0, f"the agent needs more than tinymlops[agent]:\n{result.stderr[-2000:]}"
    assert result.stdout.strip() == "no variant installed"
