"""The test run's own sizing (tests/conftest.py): how many cores `make test` may use under a container's CPU quota."""

from __future__ import annotations

import os

import pytest
from conftest import usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, expected", [
    ({}, AFFINITY),  # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no quota
    ({"cpu.max": "100000 100000\n"}, 1),  # v2, `docker run --cpus 1`
    ({"cpu.max": "50000 100000\n"}, 1),  # half a core is still one worker
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, no quota
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1 quota
    ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: the affinity
])
def test_usable_cpus_follows_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(str(tmp_path)) == expected


def test_a_quota_above_the_affinity_changes_nothing(tmp_path):
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 8) * 100000} 100000\n")
    assert usable_cpus(str(tmp_path)) == AFFINITY


def test_available_memory_is_capped_by_a_cgroup_limit(tmp_path):
    from conftest import available_memory

    assert available_memory(str(tmp_path)) > 1 << 20  # this machine's own /proc/meminfo is read
    meminfo = tmp_path / "meminfo"  # a fixed one, since the real MemAvailable moves between two reads
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:    2000000 kB\n")
    free = 2000000 * 1024
    assert available_memory(str(tmp_path), str(meminfo)) == free  # no limit file: MemAvailable
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory(str(tmp_path), str(meminfo)) == free
    (tmp_path / "memory.max").write_text(f"{1 << 30}\n")
    assert available_memory(str(tmp_path), str(meminfo)) == 1 << 30
    (tmp_path / "memory.max").write_text(f"{1 << 40}\n")  # a limit above what is free changes nothing
    assert available_memory(str(tmp_path), str(meminfo)) == free
