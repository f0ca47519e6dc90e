"""Faults (issue 26): an interrupt or a crash in the middle of replacing a checkpoint never loses the run.

The window is hit deterministically through ``erase.core.files.swap_hook`` (called between the two renames of a
folder swap), never by timing."""

import os
import signal
from contextlib import contextmanager

import pytest
import torch

from tests.test_text_to_unlearn import QUICK, request, tiny_pipe, toy_guides

STEPS = {**QUICK, "steps": 4, "checkpoint_every": 1}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))


def _erase(out, **kw):
    from erase.api import erase_concept

    return erase_concept(
        tiny_pipe(),
        "text_to_unlearn",
        request(),
        out,
        overrides=STEPS,
        progress=False,
        model_id="tiny",
        guides=toy_guides(),
        **kw,
    )


def _on_swap(monkeypatch, n: int, action):
    """Run ``action`` inside the n-th folder swap, between its two renames."""
    import erase.core.files

    calls = [0]

    def hook():
        calls[0] += 1
        if calls[0] == n:
            action()

    monkeypatch.setattr(erase.core.files, "swap_hook", hook)


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C as Python sets it up (KeyboardInterrupt), whatever handler an earlier test left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_checkpoint_swap_waits_until_the_swap_is_done(tmp_path, monkeypatch, ctrl_c_raises):
    """SIGINT sent between the renames of the second checkpoint: it is delivered once the new checkpoint is in
    place (step 2, no leftover .old), the run folder is kept, and --resume ends where an uninterrupted run ends."""
    from erase.core.loop import checkpoint_meta

    full = _erase(tmp_path / "full")
    out = tmp_path / "out"
    # raise_signal directs SIGINT at this (the main) thread: delivered before it returns. os.kill(getpid()) may hand it
    # to one of torch's threads, to be run whenever that thread is scheduled: on a loaded machine, after the run
    _on_swap(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        _erase(out)
    assert (out / "checkpoint" / "meta.json").exists() and not (out / "checkpoint.old").exists()
    assert checkpoint_meta(out)["step"] == 2
    monkeypatch.setattr("erase.core.files.swap_hook", None)
    resumed = _erase(out, resume=True)
    assert resumed.config["timing"]["resumed_from"] == 2
    assert all(torch.equal(resumed.deltas[n], full.deltas[n]) for n in full.names())


def test_a_crash_between_the_renames_keeps_the_folder_and_resumes_from_the_old_checkpoint(tmp_path, monkeypatch):
    """A crash (here an exception; in life SIGKILL or power loss) after the checkpoint became checkpoint.old and
    before the new one took its place: the clean-up must not delete a folder that holds a checkpoint, and --resume
    puts checkpoint.old back and continues from it."""
    full = _erase(tmp_path / "full")
    out = tmp_path / "out"

    def crash():
        raise RuntimeError("crash inside the swap")

    _on_swap(monkeypatch, 3, crash)
    with pytest.raises(RuntimeError, match="crash inside the swap"):
        _erase(out)
    from erase.core.loop import checkpoint_meta

    assert (
        out.exists() and checkpoint_meta(out)["step"] == 2
    )  # the clean-up put checkpoint.old back instead of deleting
    monkeypatch.setattr("erase.core.files.swap_hook", None)
    resumed = _erase(out, resume=True)
    assert resumed.config["timing"]["resumed_from"] == 2
    assert all(torch.equal(resumed.deltas[n], full.deltas[n]) for n in full.names())
    assert not (out / "checkpoint.old").exists()


def test_swap_dir_replaces_a_folder_whole_and_recovers_an_interrupted_swap(tmp_path):
    from erase.core.files import recover_swapped_dir, swap_dir

    final, tmp = tmp_path / "a", tmp_path / "a.tmp"
    final.mkdir()
    (final / "x").write_text("old")
    tmp.mkdir()
    (tmp / "x").write_text("new")
    swap_dir(tmp, final)
    assert (final / "x").read_text() == "new" and not tmp.exists() and not (tmp_path / "a.old").exists()
    final.rename(tmp_path / "a.old")  # what a crash between the renames leaves
    assert recover_swapped_dir(final) and (final / "x").read_text() == "new"
    assert not recover_swapped_dir(tmp_path / "never")


# -- shared cache entries (erase/core/cache.py) -----------------------------------------------------------------------


def _counted_build(calls: list, value: float = 1.0):
    def build():
        calls.append(1)
        return {"x": torch.full((64,), value)}

    return build


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_record"])
def test_a_damaged_cache_entry_is_rebuilt_never_used(tmp_path, damage):
    from erase.core.cache import cached_tensors

    path, calls = tmp_path / "entry.safetensors", []
    assert torch.equal(cached_tensors(path, _counted_build(calls))["x"], torch.ones(64))
    assert (
        torch.equal(cached_tensors(path, _counted_build(calls))["x"], torch.ones(64)) and len(calls) == 1
    )  # read, not rebuilt
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # a byte of the values: the file still parses, with a wrong number in it
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.with_name(path.name + ".sha256").unlink()  # a crash between the entry's rename and its record
    assert torch.equal(cached_tensors(path, _counted_build(calls))["x"], torch.ones(64)) and len(calls) == 2
    assert torch.equal(cached_tensors(path, _counted_build(calls))["x"], torch.ones(64)) and len(calls) == 2


def test_two_processes_that_need_one_entry_build_it_once(tmp_path):
    """The first process builds (and holds on until told to go on); the second starts once the first is building;
    both end with the same tensors and the build ran once. Driven by files appearing, not by timing."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = f"""
import sys, time, torch
from pathlib import Path
from erase.core.cache import cached_tensors
tmp = Path({str(tmp_path)!r})
name = sys.argv[1]
def build():
    with open(tmp / "builds", "a") as f:
        f.write(name + "\\n")
    (tmp / ("building-" + name)).touch()
    while not (tmp / "go").exists():
        time.sleep(0.01)
    return {{"x": torch.arange(1000.0)}}
(tmp / ("started-" + name)).touch()
out = cached_tensors(tmp / "cache" / "entry.safetensors", build)
assert torch.equal(out["x"], torch.arange(1000.0))
"""

    def wait_for(path: Path):
        while not path.exists():  # an event, not a timeout: the children write these files
            time.sleep(0.01)

    env = {**os.environ, "PYTHONPATH": str(root)}
    a = subprocess.Popen([sys.executable, "-c", script, "a"], cwd=root, env=env)
    wait_for(tmp_path / "building-a")
    b = subprocess.Popen([sys.executable, "-c", script, "b"], cwd=root, env=env)
    wait_for(tmp_path / "started-b")
    (tmp_path / "go").touch()
    assert a.wait(timeout=120) == 0 and b.wait(timeout=120) == 0
    assert (tmp_path / "builds").read_text().split() == ["a"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_an_unusable_cache_folder_is_said_once_and_the_work_goes_on(tmp_path, capsys):
    import erase.core.cache
    from erase.core.cache import cached_tensors

    erase.core.cache._warned.clear()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    calls = []
    for _ in range(2):
        assert torch.equal(cached_tensors(blocker / "entry.safetensors", _counted_build(calls))["x"], torch.ones(64))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(calls) == 2 and len(err) == 1 and "is not usable" in err[0] and "ERASEKIT_CACHE" in err[0]


@contextmanager
def _holder(tmp_path, folder, command="erase run"):
    """Another process holding ``folder`` (erase.core.files.hold_folder) until the block ends; yields it (a Popen)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ready = tmp_path / f"holding-{folder.name}"
    script = f"""
import time
from pathlib import Path
from erase.core.files import hold_folder
with hold_folder(Path({str(folder)!r}), {command!r}):
    Path({str(ready)!r}).touch()
    while True:
        time.sleep(1)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        while not ready.exists():  # an event: the holder says it holds the folder
            assert proc.poll() is None, "the holder died"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_run_into_a_folder_in_use_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    """Tried on main before: two `erase run` into one --out both exited 0 and one erasure was silently lost."""
    from erase.core.errors import EraseError

    out = tmp_path / "out"
    with _holder(tmp_path, out) as holder:
        with pytest.raises(
            EraseError, match=rf"out is in use by pid {holder.pid} \(erase run\); wait for it .* or choose another"
        ):
            _erase(out)
        assert not out.exists()  # the refused run wrote nothing
    patch = _erase(out)  # the dead holder's lock is taken over
    assert patch.names() and (out / "erasure_patch.safetensors").exists()
    assert not (tmp_path / ".out.lock").exists()  # released when the run ends


def test_an_evaluation_into_a_folder_in_use_is_refused_in_one_line(tmp_path, capfd):
    from tests.test_bad_input_eval import eval_args, refused

    out = tmp_path / "eval"
    with _holder(tmp_path, out, "erase eval") as holder:
        line = refused(eval_args(out), tmp_path, capfd, f"in use by pid {holder.pid} (erase eval)")
    assert line.startswith("erase eval:") and not out.exists()


def test_the_manifest_after_each_job_hashes_only_patches_that_changed(tmp_path, monkeypatch):
    """write_manifest runs after every job of a batch: it must not re-hash every finished patch each time (quadratic
    I/O at SD scale). A patch whose size and time match its record is trusted; a changed one is hashed and dropped."""
    import json

    import erase.batch as batch
    from erase.core.files import file_sha256

    concepts = ["A", "B", "C"]
    for c in concepts:
        (tmp_path / c).mkdir()
        patch = tmp_path / c / "erasure_patch.safetensors"
        patch.write_bytes(c.encode() * 1000)
        st = patch.stat()
        (tmp_path / c / batch.JOB_FILE).write_text(
            json.dumps(
                {
                    "concept": c,
                    "status": "done",
                    "sha256": file_sha256(patch),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                }
            )
        )
    hashed = []
    monkeypatch.setattr(batch, "file_sha256", lambda p: (hashed.append(p.parent.name), file_sha256(p))[1])
    assert [r["concept"] for r in batch.write_manifest(tmp_path, concepts)] == concepts and hashed == []
    b = tmp_path / "B" / "erasure_patch.safetensors"
    old = b.stat().st_mtime_ns
    b.write_bytes(
        b"X" * 1000
    )  # rewritten: same size, a new time (set explicitly: some filesystems keep whole seconds)
    os.utime(b, ns=(old + 10**9, old + 10**9))
    assert [r["concept"] for r in batch.write_manifest(tmp_path, concepts)] == ["A", "C"] and hashed == ["B"]
    hashed.clear()
    assert [r["concept"] for r in batch.write_manifest(tmp_path, concepts, rehash=True)] == ["A", "C"] and sorted(
        hashed
    ) == concepts


# -- a full disk ---------------------------------------------------------------------------------------------
def _disk_full_at(monkeypatch, module, name: str, n: int):
    """Make ``module.name`` (a writer) fail with ENOSPC from its n-th call on, as a disk that fills up would."""
    import errno

    real, calls = getattr(module, name), [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, write)
    return calls


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_resumes(tmp_path, monkeypatch):
    import erase.core.loop
    from erase.core.files import DiskFullError
    from erase.core.loop import checkpoint_meta

    _disk_full_at(monkeypatch, erase.core.loop.torch, "save", 3)  # the third checkpoint's optimiser state does not fit
    with pytest.raises(DiskFullError, match=r"no space left writing .*checkpoint .*free some space"):
        _erase(tmp_path / "run")
    assert checkpoint_meta(tmp_path / "run")["step"] == 2  # the second checkpoint, whole
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith((".tmp", ".old"))]
    monkeypatch.undo()
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))
    resumed = _erase(tmp_path / "run", resume=True)
    whole = _erase(tmp_path / "whole")
    assert all(torch.equal(resumed.deltas[n], whole.deltas[n]) for n in whole.names())


def test_a_full_disk_while_writing_a_patch_leaves_no_patch_and_no_temporaries(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    from erase.core.files import DiskFullError
    from erase.core.patch import PATCH_FILE

    real = safetensors.torch.save_file

    def save_file(tensors, filename, *a, **k):  # only the patch's own file meets a full disk
        if str(filename).endswith(PATCH_FILE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(DiskFullError, match=rf"no space left writing .*{PATCH_FILE}"):
        _erase(tmp_path / "run")
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert PATCH_FILE not in left and not [n for n in left if n.startswith(".patch-")]


def test_a_full_disk_while_writing_a_report_keeps_the_old_one(tmp_path):
    from erase.core.files import DiskFullError, write_json_atomic

    write_json_atomic(tmp_path / "report.json", {"ua": 1.0})

    import errno
    from unittest import mock

    with mock.patch("pathlib.Path.write_bytes", side_effect=OSError(errno.EFBIG, "File too large")):
        with pytest.raises(DiskFullError, match=r"no space left writing .*report.json .*file too large"):
            write_json_atomic(tmp_path / "report.json", {"ua": 0.0, "big": "x" * 1000})
    assert (tmp_path / "report.json").read_text().count('"ua": 1.0') == 1 and sorted(os.listdir(tmp_path)) == [
        "report.json"
    ]


def test_a_file_size_limit_in_a_real_process_is_one_line_exit_2(tmp_path):
    """A real ``erase run`` under RLIMIT_FSIZE (the kernel refuses the write with EFBIG):
    one line, exit 2, no patch."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); from erase.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "wc"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "run",
            "uce",
            "--model",
            "canvas-mini",
            "--concept",
            "Watercolor",
            "--kind",
            "style",
            "--preset",
            "canvas-mini",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = r.stderr.strip().splitlines()
    assert (
        r.returncode == 2
        and len(lines) == 1
        and "no space left writing" in lines[0]
        and "erasure_patch.safetensors" in lines[0]
    ), r.stderr
    assert not (out / "erasure_patch.safetensors").exists() and not [
        p for p in out.iterdir() if p.name.startswith(".patch-")
    ]


# -- the original's cached answer set: every image checked against the SHA-256 recorded when it was cached --------
def _small_protocol():
    from eval.protocols import load_protocol

    return load_protocol("canvas-mini").with_overrides(seeds=[0], steps=4)


def test_a_cached_answer_set_image_changed_before_use_is_regenerated(canvas_pipe, capfd):
    from eval.original_answers import original_answer_set, recorded_hashes

    protocol = _small_protocol()
    images = original_answer_set(canvas_pipe, protocol, progress=False)
    first, second = sorted(images.glob("*.png"))[:2]
    good = first.read_bytes()
    assert recorded_hashes(images)[first.name] == __import__("hashlib").sha256(good).hexdigest()
    first.write_bytes(second.read_bytes())  # a valid PNG, of another prompt
    capfd.readouterr()
    assert original_answer_set(canvas_pipe, protocol, progress=False) == images
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 image(s) changed or gone since they were cached" in err[0], err
    assert first.read_bytes() == good  # regenerated, and the record holds again
    assert original_answer_set(canvas_pipe, protocol, progress=False) == images and capfd.readouterr().err == ""


def test_a_cached_answer_set_image_changed_while_in_use_stops_the_evaluation(canvas_pipe, tmp_path, monkeypatch):
    """The record is checked again as scoring reads each image: one changed after the check is never scored."""
    import eval.scoring
    from erase.core.patch import apply_patch, remove_patch
    from eval.answer_set import AnswerSetError
    from eval.report import EvalOptions, evaluate
    from tests.test_eval_fidelity import _noise_patch

    protocol = _small_protocol()
    real = eval.scoring.recorded_hashes  # what scoring checks each image against as it reads it

    def tampered_after_the_check(images):
        hashes = real(images)
        victim = sorted(images.glob("*.png"))[-1]
        victim.write_bytes(sorted(images.glob("*.png"))[0].read_bytes())
        return hashes

    monkeypatch.setattr(eval.scoring, "recorded_hashes", tampered_after_the_check)
    apply_patch(canvas_pipe, _noise_patch(canvas_pipe, 0.3, 1))
    try:
        with pytest.raises(AnswerSetError, match="changed after it was cached") as e:
            evaluate(
                canvas_pipe,
                protocol,
                [("Watercolor", "style")],
                tmp_path / "e",
                model_id="canvas-mini",
                patch="noise",
                options=EvalOptions(progress=False, grid=False, fid=False),
            )
    finally:
        remove_patch(canvas_pipe)
    assert "\n" not in str(e.value) and not (tmp_path / "e" / "report.json").exists()
