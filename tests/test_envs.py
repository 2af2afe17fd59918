"""Environments: every rule has a conda env; every pin is exact and equals what the tests run."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
PIP_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.]*)$")
CONDA_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)=([0-9]+\.[0-9]+\.[0-9]+)$")


def rule_blocks(text: str) -> dict[str, str]:
    """``{rule name: its body}`` of a Snakemake file (rules inside ``if`` blocks included)."""
    parts = re.split(r"^[ \t]*(?:rule|checkpoint) (\w+):\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_rule_parser_finds_every_rule_snakemake_knows():
    """The static checks below see every rule: those of the toy graph (which enables every stage)
    and of the paper's config (encoding.jobs per_model where the toy fits per subject)."""
    import subprocess

    listed = set()
    for config in (["--configfile", "config/toy.yaml"], []):
        command = [sys.executable, "-m", "snakemake", "--list-rules", *config]
        listed |= set(
            subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        )
    parsed = {name for rule_file in RULE_FILES for name in rule_blocks(rule_file.read_text())}
    assert {"make_toy_nsd", "plot_cortical_maps", "fit_encoding_model", "fit_encoding_models"} <= listed
    assert listed - {"all"} == parsed


def installed_version(name: str) -> str:
    # A local build label (torch's "+cpu") is not part of the release that a pin names.
    return metadata.version(name).split("+")[0]


def pyproject_pins() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"] + [
        r for group in project["optional-dependencies"].values() for r in group
    ]:
        match = PIP_PIN.match(requirement)
        assert match, f"pyproject.toml: {requirement!r} is not an exact pin (name==X.Y.Z)"
        assert match[1].lower() not in pins, f"pyproject.toml pins {match[1]} twice"
        pins[match[1].lower()] = match[2]
    return pins


def env_pins(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(conda pins, pip pins) of an env file; fails on any pin that is not exact."""
    document = yaml.safe_load(path.read_text())
    conda, pip = {}, {}
    for dependency in document["dependencies"]:
        if isinstance(dependency, dict):
            for requirement in dependency["pip"]:
                match = PIP_PIN.match(requirement)
                assert match, f"{path.name}: pip requirement {requirement!r} is not an exact pin"
                pip[match[1].lower()] = match[2]
        else:
            match = CONDA_PIN.match(dependency)
            assert match, f"{path.name}: conda dependency {dependency!r} is not an exact pin (name=X.Y.Z)"
            conda[match[1]] = match[2]
    return conda, pip


def test_every_rule_declares_an_existing_env_and_a_log():
    assert RULE_FILES, "no rule files found"
    for rule_file in RULE_FILES:
        for name, body in rule_blocks(rule_file.read_text()).items():
            env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, flags=re.M)
            assert env, f"{rule_file.name}: rule {name} has no conda: env"
            assert (rule_file.parent / env[1]).resolve().is_file(), f"rule {name}: {env[1]} missing"
            assert re.search(r"^\s+log:", body, flags=re.M), f"{rule_file.name}: rule {name} has no log:"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_env_pins_are_exact_and_equal_the_tested_versions(env_file):
    conda, pip = env_pins(env_file)
    python = ".".join(map(str, sys.version_info[:3]))
    assert conda.get("python") == python, (
        f"{env_file.name}: python pin {conda.get('python')} != tested {python}"
    )
    if "pip" in conda:
        assert conda["pip"] == installed_version("pip")
    project = pyproject_pins()
    for name, version in pip.items():
        assert version == installed_version(name), (
            f"{env_file.name}: {name}=={version} but the tests run {installed_version(name)}"
        )
        assert project.get(name) == version, f"{env_file.name}: {name}=={version} differs from pyproject.toml"


def test_pyproject_pins_equal_the_tested_versions():
    for name, version in pyproject_pins().items():
        assert installed_version(name) == version, (
            f"pyproject.toml pins {name}=={version}, tests run {installed_version(name)}"
        )


def test_torchvision_imports_beside_the_pinned_torch():
    """The pinned torchvision is a release made for the pinned torch: its wheel's requirement on
    torch admits the pin, and its compiled operators register with that torch (the missing
    ``torchvision::nms`` made the release before it unimportable beside torch's CPU build)."""
    import torch
    import torchvision  # importing registers its operators with torch
    from packaging.requirements import Requirement

    pins = pyproject_pins()
    requirements = [Requirement(text) for text in metadata.requires("torchvision")]
    torch_requirement = next(r for r in requirements if r.name == "torch")
    assert torch_requirement.specifier.contains(pins["torch"]), (
        f"torchvision=={pins['torchvision']} requires {torch_requirement}, not torch=={pins['torch']}"
    )
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
    assert torch.ops.torchvision.nms is not None


def test_pin_check_catches_a_drifted_pin(tmp_path):
    """The check above must fail when a pin drifts; prove it on a doctored env file."""
    drifted = tmp_path / "drifted.yaml"
    drifted.write_text(ENV_FILES[0].read_text().replace("numpy==", "numpy==1.0.0.dev0+"))
    with pytest.raises(AssertionError):
        test_env_pins_are_exact_and_equal_the_tested_versions(drifted)
    loose = tmp_path / "loose.yaml"
    loose.write_text(ENV_FILES[0].read_text().replace("numpy==", "numpy>="))
    with pytest.raises(AssertionError, match="not an exact pin"):
        env_pins(loose)
    other = tmp_path / "other.yaml"
    version = installed_version("numpy")
    major, minor, patch = version.split(".")[:3]
    other.write_text(
        ENV_FILES[0].read_text().replace(f"numpy=={version}", f"numpy=={major}.{minor}.{int(patch) + 1}")
    )
    with pytest.raises(AssertionError, match="the tests run"):
        test_env_pins_are_exact_and_equal_the_tested_versions(other)


def test_rule_scripts_import_only_packages_of_their_env():
    """A rule script (and the brainldm modules it imports) uses only its env's packages.

    Per-rule conda envs cannot be built here (no conda), so this static check stands in for
    running each rule in its own env.
    """
    import ast

    import_names = {
        "yaml": "pyyaml",
        "PIL": "pillow",
        "sklearn": "scikit-learn",
        "skimage": "scikit-image",
        "huggingface_hub": "huggingface-hub",
    }
    stdlib = set(sys.stdlib_module_names)
    library = REPO / "workflow" / "scripts"

    def imports_of(path: Path, seen: set[Path]) -> set[str]:
        if path in seen:
            return set()
        seen.add(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import inside brainldm
                    base = path.parent
                    for _ in range(node.level - 1):
                        base = base.parent
                    targets = [node.module] if node.module else [a.name for a in node.names]
                    for target in targets:
                        module = base.joinpath(*target.split("."))
                        for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                            if candidate.exists():
                                found |= imports_of(candidate, seen)
                    continue
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "brainldm":
                    module = library.joinpath(*name.split("."))
                    for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                        if candidate.exists():
                            found |= imports_of(candidate, seen)
                elif top not in stdlib:
                    found.add(import_names.get(top, top))
        return found

    checked = 0
    for rule_file in RULE_FILES:
        for name, body in rule_blocks(rule_file.read_text()).items():
            script = re.search(r"^\s+script:\s*\n\s+\"([^\"]+)\"", body, flags=re.M)
            env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, flags=re.M)
            if not script or not env:
                continue
            _, pip = env_pins((rule_file.parent / env[1]).resolve())
            needed = imports_of((rule_file.parent / script[1]).resolve(), set())
            missing = {package.lower().replace("_", "-") for package in needed} - set(pip)
            assert not missing, f"rule {name}: imports {sorted(missing)} not in {env[1]}"
            checked += 1
    assert checked > 0
