"""requirements.lock pins every server dependency pyproject.toml declares, at a version it allows, with hashes.

The lock is what scripts/_venv.sh installs (`--require-hashes`) and what scripts/audit checks; when pyproject.toml's
dependencies change, regenerate it (the command is in its header) or this fails.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2), block.count("--hash=sha256:"))
    return pins


def test_every_server_dependency_is_locked_with_hashes() -> None:
    pins = locked()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(pins) >= len(declared)
    for spec in map(Requirement, declared):
        if spec.marker is not None and not spec.marker.evaluate():
            continue
        name = canonicalize_name(spec.name)
        assert name in pins, f"{spec.name} is a dependency in pyproject.toml but not in requirements.lock"
        version, hashes = pins[name]
        assert spec.specifier.contains(version, prereleases=True), f"{name}=={version} does not satisfy {spec}"
        assert hashes > 0, f"{name} is pinned without a hash"
    assert all(hashes > 0 for _, hashes in pins.values())
