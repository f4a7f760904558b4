"""The training commands' fast allocator: which library is chosen, and that a program really re-executes onto it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mu2slam_hf.training.memory_allocator as memory_allocator
from mu2slam_hf.training.memory_allocator import (
    ALLOCATOR_ENV,
    find_allocator,
    loaded_allocator,
    relaunch_environment,
    use_fast_allocator,
)

# The module alone (standard library only), so that the program and its re-execution start in a fraction of a second.
PROGRAM = (
    f"import importlib.util as u; spec = u.spec_from_file_location('allocator', {memory_allocator.__file__!r}); "
    "module = u.module_from_spec(spec); spec.loader.exec_module(module); print(module.use_fast_allocator())"
)


def test_find_allocator_prefers_tcmalloc_and_falls_back():
    installed = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc.so.4"}
    assert find_allocator(installed.get) == "libtcmalloc.so.4"
    assert find_allocator({"jemalloc": "libjemalloc.so.2"}.get) == "libjemalloc.so.2"
    assert find_allocator({}.get) is None


def test_loaded_allocator_reads_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    )
    assert loaded_allocator(str(maps)) == "libtcmalloc_minimal.so.4.5.10"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert loaded_allocator(str(maps)) is None
    assert loaded_allocator(str(tmp_path / "missing")) is None


def test_relaunch_environment_puts_the_library_first_and_marks_the_relaunch():
    env = relaunch_environment("libtcmalloc_minimal.so.4", {"LD_PRELOAD": "libfoo.so:libbar.so", "HOME": "/h"})
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so libbar.so"
    assert env["HOME"] == "/h" and env["_MU2SLAM_ALLOCATOR_RELAUNCHED"] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_system_allocator_on_request_never_relaunches():
    assert use_fast_allocator({ALLOCATOR_ENV: "system"}) == f"glibc malloc ({ALLOCATOR_ENV}=system)"


def test_a_failed_preload_is_reported_not_retried(monkeypatch):
    monkeypatch.setattr("mu2slam_hf.training.memory_allocator.loaded_allocator", lambda: None)
    line = use_fast_allocator({"_MU2SLAM_ALLOCATOR_RELAUNCHED": "1", "LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    assert line.startswith("glibc malloc: preloading libtcmalloc_minimal.so.4 failed")


def _run_program(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ALLOCATOR_ENV)} | env
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(find_allocator() is None, reason="no tcmalloc/jemalloc installed (scripts/setup.sh installs it)")
def test_a_program_reexecutes_itself_with_the_allocator_preloaded():
    line = _run_program()  # the mapped file may carry the full version: libtcmalloc_minimal.so.4.5.10
    assert line.startswith(find_allocator().split(".so")[0] + ".so") and line.endswith(" (preloaded)"), line
    assert _run_program(**{ALLOCATOR_ENV: "system"}) == f"glibc malloc ({ALLOCATOR_ENV}=system)"


@pytest.mark.skipif(find_allocator() is not None, reason="a fast allocator is installed here")
def test_without_an_allocator_the_program_runs_on_and_says_how_to_install_one():
    assert "apt-get install libtcmalloc-minimal4" in _run_program()


def test_training_on_a_gpu_keeps_the_system_allocator(monkeypatch):
    monkeypatch.setattr("mu2slam_hf.training.memory_allocator.loaded_allocator", lambda: None)
    assert use_fast_allocator({}, training_on_cpu=False) == "glibc malloc (training on a GPU)"
