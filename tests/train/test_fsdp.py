"""``padt train`` under FSDP, for real: two CPU processes (gloo) with the shipped ``configs/accelerate_fsdp.yaml``.

accelerate (1.15) runs FSDP only on accelerators: on a CPU it silently falls back to plain multi-process data
parallelism, and its FSDP plugin refuses ``sync_module_states`` without a GPU. So the FSDP run is launched
through this file (``accelerate launch ... tests/train/test_fsdp.py train ...``), whose ``__main__`` turns
accelerate's CPU multi-process state into its FSDP state (the plugin the config describes, CPU as the device)
and then runs ``padt.cli.main``: everything after that is padt's and torch's own FSDP code. Two settings of the
config are overridden on the command line because they need a GPU: ``sync_module_states`` (every process builds
the same seeded tiny model anyway) and ``cpu_ram_efficient_loading``; mixed precision is off so the runs compare
in fp32.

Tolerance: the same as the DDP test, relative 1e-4 (absolute 1e-6) on every loss term of steps 1 and 2; the
learning rate of every step must be equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
TERMS = ("loss", "ce", "box_l1", "box_giou", "score", "mask_dice", "mask_focal")
#: How long the FSDP run may take after its last logged step to save and exit before it counts as hung.
SAVE_GRACE_S = 20


def _fsdp_on_cpu() -> None:
    """Make accelerate treat its CPU multi-process state as FSDP when an FSDP plugin is configured."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # FSDP compares its compute device ("cpu") with accelerate's device ("cpu:0" per process).
            self.device = PartialState._shared_state["device"] = torch.device("cpu")

    AcceleratorState.__init__ = init


def _record_wrapping(probe: Path) -> None:
    """Write what ``accelerator.prepare`` made of the objective: wrapper class, FSDP units, local/total sizes."""
    import accelerate
    from torch.distributed.fsdp import FullyShardedDataParallel

    original = accelerate.Accelerator.prepare

    def prepare(self, *objects, **kwargs):
        prepared = original(self, *objects, **kwargs)
        model = prepared[0]
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            total = sum(p.numel() for p in model.parameters())
        facts = {"wrapper": type(model).__name__, "units": len(FullyShardedDataParallel.fsdp_modules(model)),
                 "distributed_type": str(self.distributed_type), "local_numel": sum(p.numel() for p in
                 model.parameters()), "total_numel": total}
        probe.with_name(f"{probe.name}.{self.process_index}").write_text(json.dumps(facts))
        return prepared

    accelerate.Accelerator.prepare = prepare


def _train_args(records: Path, images: Path, out: Path, batch_size: int) -> list[str]:
    return ["train", "--tiny", "--records", str(records), "--images", str(images), "--max-steps", str(STEPS),
            "--lr", "1e-3", "--decoder-warmup-steps", "1", "--seed", "0", "--batch-size", str(batch_size),
            "--output-dir", str(out)]


def _metrics(out: Path) -> dict[int, dict]:
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {row["step"]: row for row in rows if "loss" in row}


def _run_fsdp(args: list[str], out: Path, probe: Path, env: dict) -> dict:
    """Launch the 2-process FSDP run; wait for its steps, then at most SAVE_GRACE_S for it to save and exit."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" /
              "accelerate_fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
              "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false", __file__]
    log = open(out.parent / "fsdp.log", "w")  # noqa: SIM115 - closed below, after the process
    # A session of its own, so that a hung run's worker processes are killed with the launcher.
    process = subprocess.Popen([*launch, *args], cwd=REPO, env={**env, "PADT_FSDP_PROBE": str(probe)},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, saved_by = time.monotonic() + 150, None
    while process.poll() is None and time.monotonic() < (saved_by or deadline):
        if saved_by is None and len(_metrics(out)) == STEPS:
            saved_by = time.monotonic() + SAVE_GRACE_S
        time.sleep(0.5)
    hung = process.poll() is None
    if hung:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    return {"returncode": None if hung else process.returncode, "hung": hung,
            "log": (out.parent / "fsdp.log").read_text()[-3000:]}


@pytest.fixture(scope="module")
def runs(synthetic_records, images_dir, tmp_path_factory) -> dict:
    if sys.platform != "linux":
        pytest.skip("the gloo multi-process test runs on Linux")
    root = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    records = synthetic_records["rec_train"]
    single = subprocess.run([sys.executable, "-m", "padt.cli", *_train_args(records, images_dir, root / "one", 4)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr[-2000:]
    (root / "two").mkdir()
    fsdp = _run_fsdp(_train_args(records, images_dir, root / "two", 2), root / "two", root / "probe", env)
    return {"root": root, "one": _metrics(root / "one"), "two": _metrics(root / "two"), "fsdp": fsdp,
            "probes": [json.loads((root / f"probe.{rank}").read_text()) for rank in (0, 1)
                       if (root / f"probe.{rank}").is_file()]}


def test_fsdp_shards_the_model(runs):
    assert len(runs["probes"]) == 2, runs["fsdp"]["log"]
    for facts in runs["probes"]:
        assert facts["wrapper"] == "FullyShardedDataParallel" and facts["distributed_type"] == "DistributedType.FSDP"
        assert facts["units"] >= 5  # the root plus every decoder layer and vision block of the tiny model (2 + 2)
        assert facts["local_numel"] < 0.6 * facts["total_numel"]  # each process holds about half


def test_fsdp_first_steps_follow_the_single_process_run(runs):
    one, two = runs["one"], runs["two"]
    assert sorted(two) == list(range(1, STEPS + 1)), runs["fsdp"]["log"]
    # Step 1: the same global batch on the same weights; step 2: after the same first update.
    for step in (1, 2):
        for term in TERMS:
            assert two[step][term] == pytest.approx(one[step][term], rel=1e-4, abs=1e-6), (step, term)
    assert [two[s]["lr"] for s in sorted(two)] == [one[s]["lr"] for s in sorted(one)]


def test_fsdp_run_saves_complete_weights_and_exits(runs):
    from safetensors.torch import load_file

    assert not runs["fsdp"]["hung"] and runs["fsdp"]["returncode"] == 0, runs["fsdp"]["log"]
    step = f"checkpoints/step-{STEPS:07d}/trainable.safetensors"
    one, two = (load_file(runs["root"] / name / step) for name in ("one", "two"))
    assert {k: v.shape for k, v in two.items()} == {k: v.shape for k, v in one.items()}
    assert (runs["root"] / "two" / "final" / "config.json").is_file()


if __name__ == "__main__":  # the FSDP process itself, under accelerate launch
    _fsdp_on_cpu()
    _record_wrapping(Path(os.environ["PADT_FSDP_PROBE"]))
    from padt.cli import main

    sys.exit(main(sys.argv[1:]))
