"""The hash locks in requirements/ cover what pyproject.toml and the build need.

`make setup` installs requirements/dev.txt with --require-hashes; the image and a PoP
install runtime.txt and build.txt (scripts/install-prefix.sh). A dependency added to
pyproject.toml without `make lock` would fail there (or, worse, be missed); these tests
say which one and where, before that.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
HASH_RE = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: int


def read_lock(name: str, *, everywhere: bool = False) -> dict[str, Pin]:
    """``{canonical name: Pin}`` of a pip requirements file written by `make lock`: the
    pins for this Python and platform (the lock is universal: a pin may carry a marker),
    or with ``everywhere`` every pin, keyed by name and marker."""
    text = (REQUIREMENTS / name).read_text()
    pins: dict[str, Pin] = {}
    # A pin spans its continuation lines: `name==1.0 ; marker \` then `--hash=…` lines.
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        requirement = Requirement(entry.split(" --hash", 1)[0].strip())
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{name}: {entry.split()[0]} is not pinned with =="
        )
        key = canonicalize_name(requirement.name)
        if everywhere:
            key += f"; {requirement.marker}" if requirement.marker else ""
        elif requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert key not in pins, f"{name}: {key} is pinned twice for this environment"
        pins[key] = Pin(specifiers[0].version, len(HASH_RE.findall(entry)))
    return pins


def pyproject(path: Path = ROOT / "pyproject.toml") -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def requirements_of(items: list[str]) -> list[Requirement]:
    return [Requirement(item) for item in items]


def runtime_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return requirements_of(project["dependencies"])


def dev_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return requirements_of(project["optional-dependencies"]["dev"])


def build_requirements() -> list[Requirement]:
    """setup.py's build-system, maturin's (native/), and requirements/build.in."""
    relay = pyproject()["build-system"]
    native = pyproject(ROOT / "native" / "pyproject.toml")["build-system"]
    assert isinstance(relay, dict) and isinstance(native, dict)
    build_in = [
        line.split("#", 1)[0].strip()
        for line in (REQUIREMENTS / "build.in").read_text().splitlines()
    ]
    return requirements_of([*relay["requires"], *native["requires"], *filter(None, build_in)])


def assert_covered(lock_name: str, requirements: list[Requirement]) -> None:
    lock = read_lock(lock_name)
    problems = []
    for requirement in requirements:
        pin = lock.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is missing")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is pinned at {pin.version}")
    assert not problems, f"requirements/{lock_name} (run `make lock`): " + "; ".join(problems)


def test_dev_lock_pins_everything_make_setup_installs() -> None:
    assert_covered("dev.txt", runtime_requirements() + dev_requirements() + build_requirements())


def test_runtime_lock_pins_every_runtime_dependency() -> None:
    assert_covered("runtime.txt", runtime_requirements())


def test_build_lock_pins_every_build_requirement() -> None:
    assert_covered("build.txt", build_requirements())


def test_runtime_lock_carries_no_build_or_test_tools() -> None:
    """The image's venv is runtime.txt: a test runner or a compiler there is attack
    surface and size for nothing."""
    runtime = set(read_lock("runtime.txt"))
    tools = {canonicalize_name(r.name) for r in dev_requirements() + build_requirements()} - {
        canonicalize_name(r.name) for r in runtime_requirements()
    }
    assert not runtime & tools, f"in runtime.txt: {sorted(runtime & tools)}"


@pytest.mark.parametrize("lock_name", ["dev.txt", "runtime.txt", "build.txt"])
def test_every_pin_carries_hashes(lock_name: str) -> None:
    missing = [
        name for name, pin in read_lock(lock_name, everywhere=True).items() if pin.hashes == 0
    ]
    assert not missing, f"requirements/{lock_name}: no --hash for {missing}"


def test_the_locks_agree_on_every_version() -> None:
    """What CI tests (dev.txt) is what ships (runtime.txt) and builds (build.txt)."""
    dev = read_lock("dev.txt", everywhere=True)
    for lock_name in ("runtime.txt", "build.txt"):
        for name, pin in read_lock(lock_name, everywhere=True).items():
            # dev.txt may need everywhere what a narrower lock needs on one platform
            # (tzdata: psycopg's on Windows, a dev tool's everywhere): that pin covers it.
            dev_pin = dev.get(name) or dev.get(name.split(";", 1)[0])
            assert dev_pin is not None, f"{name} is in {lock_name} but not in dev.txt"
            assert pin.version == dev_pin.version, (
                f"{name}: {pin.version} in {lock_name}, {dev_pin.version} in dev.txt"
            )


def test_this_venv_was_installed_from_the_dev_lock() -> None:
    """`make setup` installs from the lock: every locked package here has its pinned
    version (a venv from before the lock, or a hand-made one, shows up here)."""
    wrong = []
    for name, pin in read_lock("dev.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} not installed")
            continue
        if Version(installed) != Version(pin.version):
            wrong.append(f"{name} {installed} (lock: {pin.version})")
    assert not wrong, "run `make setup`: " + "; ".join(wrong)
