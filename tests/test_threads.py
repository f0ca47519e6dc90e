"""Thread counts from the CPUs a process may use (erase.core.threads): cgroup quotas, affinity, a batch's share."""

import os
import subprocess
import sys

import pytest

from erase.core.threads import cgroup_cpus, default_threads, usable_cpus


@pytest.mark.parametrize(
    "files, cpus",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpus(tmp_path) == cpus


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert usable_cpus(tmp_path) == 8  # no quota files: the affinity mask
    (tmp_path / "cpu.max").write_text("250000 100000")
    assert usable_cpus(tmp_path) == 3  # 2.5 CPUs of quota: 3 threads
    (tmp_path / "cpu.max").write_text("10000 100000")
    assert usable_cpus(tmp_path) == 1


def test_a_batchs_workers_share_the_cpus(monkeypatch):
    import erase.core.threads

    monkeypatch.setattr(erase.core.threads, "usable_cpus", lambda root=None: 8)
    assert [default_threads(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_openmp_sleeps_only_when_a_batchs_ranks_share_the_cpus():
    """A lone process keeps OpenMP's default (2.3x faster alone); ranks sharing the machine
    sleep; a user's choice stays."""
    code = "import os, erase.cli; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}

    def policy(**extra):
        return subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        ).stdout.strip()

    assert policy() == "unset"
    assert policy(WORLD_SIZE="2") == "PASSIVE" and policy(LOCAL_WORLD_SIZE="2", WORLD_SIZE="4") == "PASSIVE"
    assert policy(LOCAL_WORLD_SIZE="1", WORLD_SIZE="4") == "unset"  # one rank on this machine
    assert policy(WORLD_SIZE="2", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_a_models_identity_does_not_depend_on_the_thread_count():
    """Caches (latent mappers, answer sets) and run identities (the guides' digests) are keyed by model_identity: the
    same weights must give the same key at 1 and 2 threads. A float32 mean of this layer's weight differs in its last
    bits between the two (checked here, so the test keeps its teeth on a machine where it would not)."""
    import torch

    from erase.core.data import model_identity

    torch.manual_seed(0)
    layer = torch.nn.Linear(4096, 512).requires_grad_(False)
    before = torch.get_num_threads()
    try:
        ids, means = [], []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ids.append(model_identity(layer))
            means.append(float(layer.weight.reshape(-1).mean()))
    finally:
        torch.set_num_threads(before)
    if means[0] == means[1]:
        pytest.skip("this machine's float32 mean does not depend on the thread count")
    assert ids[0] == ids[1]
