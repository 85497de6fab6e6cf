"""``padt train``: the training loop on accelerate (one process, DDP, FSDP or DeepSpeed from the same code).

Data order is a pure function of ``(seed, epoch)`` and VRT sampling of ``(seed, epoch, index)``; each optimizer
step takes ``batch_size * grad_accum * world_size`` records, and each process takes a contiguous slice of every
micro-batch. So one process with batch 4 and two processes with batch 2 see the same global batches, and a run
resumed from a checkpoint continues with exactly the batches it would have seen.

Steps are numbered from 1 everywhere (``metrics.jsonl``, checkpoints, error messages): step ``s`` is the
``s``-th optimizer step, and the decoder warm-up covers steps ``1 .. warmup_steps``. One output folder holds one
run: a new run refuses a folder with an earlier run's checkpoints or metrics unless ``resume`` (continue it) or
``overwrite`` (delete them) is set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from padt.datasets.records import read_jsonl
from padt.datasets.training import GroundingCollator, GroundingDataset, check_images
from padt.losses import PaDTCriterion, check_finite
from padt.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from padt.train.config import TrainConfig
from padt.train.objective import PaDTObjective
from padt.train.setup import final_model, load_starting_model, prepare_trainable

if TYPE_CHECKING:
    from accelerate import Accelerator


def epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of one epoch (the same on every process)."""
    return np.random.default_rng([seed, epoch]).permutation(num_records)


@dataclass
class _StepPlan:
    """How the records split into optimizer steps, and this process's share of each micro-batch."""

    world: int  # number of processes
    rank: int  # this process's index
    micro_global: int  # records per micro-batch over all processes
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int  # the first steps feed the decoder ground-truth prototypes


@dataclass
class _Run:
    """Everything the steps of one training run share."""

    config: TrainConfig
    accelerator: Accelerator
    processor: object
    dataset: GroundingDataset
    collate: GroundingCollator
    plan: _StepPlan
    objective: torch.nn.Module  # the PaDTObjective, optimizer and scheduler as accelerate prepared them
    optimizer: torch.optim.Optimizer
    scheduler: Any
    output_dir: Path
    run_id: str = ""  # stored in every checkpoint; pruning only ever removes this run's (see _start_step)


def train(config: TrainConfig) -> Path:
    """Train as configured; return the folder of the final model (``output_dir/final``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    config.check_ready()
    output_dir = Path(config.output_dir)
    _refuse_earlier_run(config)
    # Every image is checked before the (maybe large) model loads, not when its batch comes up.
    records = [record for path in config.records for record in _read_records(path)]
    check_images(records, config.images)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        # Without a GPU, accelerate only sets up multi-process (gloo) training when told it runs on CPU.
        cpu=not torch.cuda.is_available(),
        # Text-only batches leave the decoder unused; DDP must not wait for its gradients then.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,  # else accelerate steps it once per process: total_steps counts them
    )
    torch.manual_seed(config.seed)
    model, processor = load_starting_model(config)
    mask_scale = model.vrt_decoder.config.mask_subpixels
    trainable = prepare_trainable(model, config)

    vrts_per_object = config.vrts_per_object or model.config.num_vrt_per_object
    dataset = _dataset(config, records, processor, mask_scale, vrts_per_object)
    collate = GroundingCollator(processor, mask_scale)
    plan = _plan_steps(config, len(dataset), accelerator.num_processes, accelerator.process_index)

    objective = PaDTObjective(trainable, PaDTCriterion(config.loss_weights), config.decoder_trains_vision)
    optimizer = torch.optim.AdamW(
        [p for p in objective.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = _scheduler(optimizer, config, plan.total_steps)
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # padt prepares no dataloader, so DeepSpeed cannot read the micro-batch from one
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    run = _Run(config, accelerator, processor, dataset, collate, plan, objective, optimizer, scheduler, output_dir)

    _train_steps(run, _start_step(run))
    return _finish(run)


def _dataset(config: TrainConfig, records, processor, mask_scale: int, vrts_per_object: int) -> GroundingDataset:
    """The training records (of every ``config.records`` file), as model inputs and targets."""
    return GroundingDataset(
        records, config.images, processor, mask_scale=mask_scale, vrts_per_object=vrts_per_object,
        sampling=config.vrt_sampling, seed=config.seed, answer_format=config.answer_format,
    )


def _plan_steps(config: TrainConfig, num_records: int, world: int, rank: int) -> _StepPlan:
    """Steps per epoch, total and warm-up steps; raises when the records do not fill one optimizer step."""
    micro_global = config.batch_size * world
    steps_per_epoch = num_records // (micro_global * config.grad_accum)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{num_records} records are fewer than one optimizer step needs "
            f"(batch_size {config.batch_size} x grad_accum {config.grad_accum} x {world} processes)"
        )
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return _StepPlan(world, rank, micro_global, steps_per_epoch, total_steps, config.warmup_steps(total_steps))


def _refuse_earlier_run(config: TrainConfig) -> None:
    """Raise ``ValueError`` when a new run (no ``resume``, no ``overwrite``) would share its folder with another.

    Two runs in one folder lose data: the pruner of one deletes the other's checkpoints, and ``metrics.jsonl``
    mixes both.
    """
    if config.resume or config.overwrite:
        return
    found = _earlier_run(Path(config.output_dir))
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(
            f"output folder {config.output_dir} already holds an earlier run ({shown}): pass --resume to continue "
            "it, or --overwrite to delete its checkpoints and metrics.jsonl and start a new run there "
            "(or give another --output-dir)"
        )


def _earlier_run(output_dir: Path) -> list[str]:
    """What an earlier run left in ``output_dir`` that a new one would mix with: checkpoints, metrics.jsonl."""
    checkpoints = output_dir / "checkpoints"
    found = sorted(f"checkpoints/{p.name}" for p in checkpoints.iterdir()) if checkpoints.is_dir() else []
    return found + (["metrics.jsonl"] if (output_dir / "metrics.jsonl").exists() else [])


def _start_step(run: _Run) -> int:
    """Return the number of the last step done, and set the run's id.

    With ``--resume``: the latest checkpoint's step and run id, ``metrics.jsonl`` cut back to that step. Else 0 and
    a new id, after deleting an earlier run's checkpoints and metrics (``--overwrite``) and writing the config.
    """
    config, accelerator, output_dir = run.config, run.accelerator, run.output_dir
    if config.resume:
        folder = latest_checkpoint(output_dir)
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {output_dir / 'checkpoints'}")
        unwrapped = accelerator.unwrap_model(run.objective)
        state = load_checkpoint(folder, unwrapped, run.optimizer, run.scheduler)
        # Checkpoints written before runs had ids carry none: a new id then never prunes them.
        run.run_id = state.get("run_id") or uuid.uuid4().hex
        if accelerator.is_main_process:
            _truncate_metrics(output_dir / "metrics.jsonl", state["step"])
        return state["step"]
    run.run_id = uuid.uuid4().hex
    if accelerator.is_main_process:
        if config.overwrite:
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
            (output_dir / "metrics.jsonl").unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step``: the resumed run logs the later steps again.

    A line cut short by the crash that interrupted the run is dropped too. Rewritten atomically.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _train_steps(run: _Run, start_step: int) -> None:
    """Optimizer steps ``start_step + 1 .. total_steps``: log each, checkpoint and evaluate as configured."""
    config, accelerator, plan = run.config, run.accelerator, run.plan
    eval_records = _read_records(config.eval_records) if config.eval_records and config.eval_every > 0 else None
    log_path = run.output_dir / "metrics.jsonl"
    bar = tqdm(total=plan.total_steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    run.objective.train()
    for step in range(start_step + 1, plan.total_steps + 1):
        epoch, position = divmod(step - 1, plan.steps_per_epoch)
        order = epoch_order(len(run.dataset), config.seed, epoch)
        run.dataset.set_epoch(epoch)
        started = time.perf_counter()
        logged = _optimizer_step(run, step, order, position)
        record = {"step": step, "epoch": epoch, "lr": run.scheduler.get_last_lr()[0], **logged,
                  "seconds": round(time.perf_counter() - started, 4), "warmup": step <= plan.warmup_steps}
        if accelerator.is_main_process:
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.set_postfix({k: f"{logged[k]:.3f}" for k in ("loss", "ce", "box_giou", "mask_dice") if k in logged})
            bar.update(1)
        if config.save_every and step % config.save_every == 0 and step < plan.total_steps:
            _save(run, step)
        if eval_records and (step % config.eval_every == 0 or step == plan.total_steps):
            _evaluate_and_log(run, step, eval_records, log_path, bar)
    bar.close()


def _optimizer_step(run: _Run, step: int, order: np.ndarray, position: int) -> dict[str, float]:
    """Optimizer step ``step`` (from 1), the ``position``-th of its epoch: ``grad_accum`` micro-batches.

    Returns its loss terms (mean over the global batch).
    """
    config, accelerator, plan = run.config, run.accelerator, run.plan
    logged: dict[str, float] = {}
    for micro in range(config.grad_accum):
        first = (position * config.grad_accum + micro) * plan.micro_global
        batch_indices = order[first + plan.rank * config.batch_size : first + (plan.rank + 1) * config.batch_size]
        batch = run.collate([run.dataset[int(i)] for i in batch_indices]).to(accelerator.device)
        terms = _micro_step(run, step, batch)
        for name, value in terms.items():
            logged[name] = logged.get(name, 0.0) + float(value.detach()) / config.grad_accum
    if plan.world > 1:
        # Log the global batch's terms: the mean over processes (each term is already a per-process mean).
        names = sorted(logged)
        means = accelerator.reduce(torch.tensor([logged[n] for n in names], device=accelerator.device), "mean")
        logged = dict(zip(names, means.tolist()))
    return logged


def _micro_step(run: _Run, step: int, batch) -> dict[str, torch.Tensor]:
    """Forward and backward of one micro-batch of step ``step`` (from 1); the optimizer steps when accelerate syncs
    gradients."""
    accelerator, plan = run.accelerator, run.plan
    # Box and score sums are divided by the global object count / world size: DDP then averages
    # gradients into exactly the global mean (see PaDTObjective.forward).
    objects = accelerator.reduce(torch.tensor(float(batch.num_objects), device=accelerator.device), "sum")
    with accelerator.accumulate(run.objective):
        terms = run.objective(batch, use_gt_prototypes=step <= plan.warmup_steps, num_boxes=objects.item() / plan.world)
        check_finite(terms, step)
        accelerator.backward(terms["loss"])
        if accelerator.sync_gradients and run.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.objective.parameters(), run.config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step() if accelerator.sync_gradients else None
        run.optimizer.zero_grad()
    return terms


def _evaluate_and_log(run: _Run, done: int, eval_records, log_path: Path, bar) -> None:
    """Held-out metrics after step ``done``, appended to the metrics log; the objective goes back to training."""
    metrics = _evaluate(run.accelerator.unwrap_model(run.objective), run.processor, eval_records, run.config)
    if run.accelerator.is_main_process:
        with log_path.open("a") as handle:
            handle.write(json.dumps({"step": done, "eval": metrics}) + "\n")
        bar.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "/" in k))
    run.objective.train()


def _finish(run: _Run) -> Path:
    """Save the last checkpoint and the final model (main process only); return the final model's folder."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    final = run.output_dir / "final"
    _save(run, run.plan.total_steps)
    gathered = _gathered_state(run)  # every process: FSDP gathers the shards onto the main process
    if accelerator.is_main_process:
        model_state = None if gathered is None else {
            name[len("model."):]: tensor for name, tensor in gathered.items() if name.startswith("model.")
        }
        _save_final(final, accelerator.unwrap_model(run.objective).model, run.processor, model_state)
    accelerator.wait_for_everyone()
    return final


def _gathered_state(run: _Run) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the objective's full state dict (on the main process; every process must call this, as it
    gathers the shards); ``None`` elsewhere, where each process holds the whole model and reads it directly."""
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import FullyShardedDataParallel

    if run.accelerator.distributed_type != DistributedType.FSDP:
        return None
    # Every process takes part in gathering each unit's full parameters; names lose FSDP's wrapper parts.
    with FullyShardedDataParallel.summon_full_params(run.objective, writeback=False):
        unwrapped = run.accelerator.unwrap_model(run.objective)
        return {
            name.replace("_fsdp_wrapped_module.", ""): tensor.detach().cpu().clone()
            for name, tensor in unwrapped.named_parameters()
        }


def _read_records(path: str):
    if not Path(path).is_file():
        raise FileNotFoundError(f"training records file not found: {path}")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"training records file {path} holds no records")
    return records


def _evaluate(objective: PaDTObjective, processor, records, config: TrainConfig) -> dict[str, float]:
    """Held-out metrics of the model being trained (every process takes its share of the records)."""
    from padt.evaluation import evaluate
    from padt.pipeline import PaDTPipeline

    model = objective.padt.eval()
    tasks = {"rec": "rec,res" if model.vrt_decoder.config.mask_head else "rec", "ovd": "ovd",
             "ric": "ric"}
    pipeline = PaDTPipeline(model, processor, batch_size=config.batch_size, max_new_tokens=128)
    return evaluate(pipeline, records, config.images, tasks[records[0].task], progress=False).metrics


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = config.lr_warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save(run: _Run, step: int) -> None:
    """The checkpoint of step ``step``, tagged with the run's id for pruning. Every process calls it (under FSDP
    the trainable weights are gathered first); the main process writes."""
    gathered = _gathered_state(run)
    if run.accelerator.is_main_process:
        unwrapped = run.accelerator.unwrap_model(run.objective)
        weights = None
        if gathered is not None:  # FSDP: the full tensors of the trainable parameters, under their plain names
            trainable = {n.replace("_fsdp_wrapped_module.", "") for n, p in unwrapped.named_parameters()
                         if p.requires_grad}
            weights = {n: t.contiguous() for n, t in gathered.items() if n in trainable}
        save_checkpoint(run.output_dir, step, unwrapped, run.optimizer, run.scheduler, {}, run_id=run.run_id,
                        weights=weights)


def _save_final(final: Path, model, processor, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the final model + processor atomically: a folder ``from_pretrained`` and ``padt eval`` load.

    ``state`` is the model's gathered state dict under FSDP (its own would be this process's shards only).
    """
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged = final_model(model) if state is None else model
    merged.save_pretrained(tmp, **({} if state is None else {"state_dict": state}))
    processor.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
