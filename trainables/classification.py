"""Ray Train worker loop for supervised classification (`task="clf"`).

One call trains one configuration on this worker's shard: per epoch it reports train loss/top-1,
validation and test loss/top-1/top-5 (every `eval_every` epochs), lr, the trust-ratio summary, epoch
seconds and images/s, and checkpoints (`run_epochs`). A non-finite loss or parameter, or a train loss
above `divergence_factor`·ln(classes), ends the run with status `TrialStatus.DIVERGED` instead of an exception.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from optim import per_sample_grad_norms
from optim.clars import CLARS, microbatch_grad_norms
from trainables.augment import normalize
from trainables.batches import MICRO_AUTO, Shard, resolve_batching
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.records import MICRO_CHOSEN_KEY
from trainables.checkpoints import restore
from trainables.epochs import EpochMeter, Epochs, current_lr, due, evaluate_batches, run_epochs, steps
from trainables.feeds import AUGMENT_STREAM, MemoryFeed, StreamedFeed  # noqa: F401 - AUGMENT_STREAM: re-exported
from trainables.session import Session
from trainables.stream import StreamedData, StreamFeed, decode_workers
from trainables.worker import WorkerEnv, build_training, place_model, start_worker


def input_pipeline(mean: tuple, std: tuple, env: WorkerEnv) -> Callable[[Tensor], Tensor]:
    """uint8 batch → normalised float batch in the model's memory format."""
    mean_t, std_t = torch.tensor(mean, device=env.device), torch.tensor(std, device=env.device)
    return lambda x: normalize(x, mean_t, std_t).contiguous(memory_format=env.memory_format())


def clars_norms(cfg: TrialConfig, model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> list[Tensor]:
    """CLARS' (1/b)·Σᵢ‖∇fᵢ‖ per parameter over this worker's `b` samples `x`."""
    if cfg.clars_norms == "exact":
        return per_sample_grad_norms(model, loss_fn, x, y)
    return microbatch_grad_norms(model, loss_fn, x, y, min(cfg.clars_microbatches, x.shape[0]))


def accumulation(network: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` on all but the last micro-batch: gradients all-reduce once per step, accumulated."""
    return network.no_sync() if not last and hasattr(network, "no_sync") else contextlib.nullcontext()


def train_step(cfg: TrialConfig, env: WorkerEnv, network: nn.Module, model: nn.Module, optimizer, loss_fn,
               x: Tensor, y: Tensor, micro: int) -> tuple[Tensor, Tensor]:
    """One optimizer step on this worker's batch, forward/backward in micro-batches of `micro` samples.

    The gradients of the micro-batches' losses, each weighted by its share of the batch, add up to the
    gradient of the batch's mean loss; the optimizer (and so every trust ratio) sees only that sum,
    all-reduced over workers. Returns the batch's mean loss and its logits (detached).
    """
    optimizer.zero_grad(set_to_none=True)
    pieces = list(zip(x.split(micro), y.split(micro)))
    losses, outputs, norms = [], [], []
    for i, (xs, ys) in enumerate(pieces):
        with accumulation(network, last=i == len(pieces) - 1):
            with env.autocast():
                logits = network(xs)
                loss = loss_fn(logits.float(), ys)
            (loss * (xs.shape[0] / x.shape[0])).backward()
        losses.append(loss.detach())
        outputs.append(logits.detach())
        if isinstance(optimizer, CLARS):
            norms.append(torch.stack(clars_norms(cfg, model, loss_fn, xs, ys)).detach())
    if isinstance(optimizer, CLARS):  # the mean over the global batch: micro-batches and workers are equal-sized
        mean = env.all_sum(torch.stack(norms).mean(0)) / env.world_size
        optimizer.set_per_sample_grad_norms(model.parameters(), list(mean.unbind()))
    optimizer.step()
    return torch.stack(losses).mean(), torch.cat(outputs)


def fitting_micro_batch(cfg: TrialConfig, env: WorkerEnv, network: nn.Module, model: nn.Module, loss_fn,
                        x: Tensor, y: Tensor, bn_group: int) -> int:
    """`micro_batch_size=auto`: the largest multiple of `bn_group` dividing this worker's batch whose
    forward and backward fit the device, probed once (model state untouched); the whole batch on CPU."""
    local = x.shape[0]
    if env.device.type != "cuda":
        return local  # host memory is not probed: a CPU run takes the whole batch
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        for size in sorted((d for d in range(bn_group, local + 1, bn_group) if local % d == 0), reverse=True):
            try:
                with accumulation(network, last=False), env.autocast():
                    loss_fn(network(x[:size]).float(), y[:size]).backward()
                return size
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
            finally:
                model.zero_grad(set_to_none=True)
        raise RuntimeError(f"micro_batch_size: even bn_group={bn_group} samples do not fit the device's memory")
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])


def train_classifier(config: dict[str, Any], session: Session | None = None, shared_data: Any = None
                     ) -> list[dict[str, Any]]:
    """Train and evaluate one configuration; returns the metric history.

    TorchTrainer's `train_loop_per_worker`, or called in a one-worker trial's Tune actor with a `TuneSession`."""
    entered = time.perf_counter()
    cfg, env, data = start_worker(config, session, shared_data)
    shard = Shard(len(data.train), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.image_size, init=cfg.init, width=cfg.width)
    micro, bn_group = resolve_batching(cfg.batch_size, env.world_size, cfg.micro_batch_size, cfg.bn_group,
                                       env.device.type == "cuda")
    model = place_model(model, env, bn_group)
    optimizer, scheduler, telemetry = build_training(cfg, model, shard.steps, cfg.epochs)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    state = restore(modules, env)
    network = compiled(env.prepare(model), cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    prepare = input_pipeline(data.mean, data.std, env)
    chosen: dict[str, int] = {}  # micro_batch_size=auto: the size its probe picked
    feed = make_feed(cfg, env, data, shard)

    def train(epoch: int, meter: EpochMeter) -> None:
        model.train()
        for step, images, y in steps(feed.epoch(epoch), meter, env):
            x = prepare(images)
            if micro == MICRO_AUTO and not chosen:
                chosen[MICRO_CHOSEN_KEY] = fitting_micro_batch(cfg, env, network, model, loss_fn, x, y, bn_group)
            size = chosen.get(MICRO_CHOSEN_KEY, micro)
            try:
                loss, logits = train_step(cfg, env, network, model, optimizer, loss_fn, x, y, size)
            except torch.OutOfMemoryError as error:
                raise RuntimeError(f"micro_batch_size: out of device memory at {size} samples per micro-batch; "
                                   "set a smaller micro_batch_size, or micro_batch_size=auto") from error
            scheduler.step()
            meter.add(loss, logits, y)

    def evaluate_epoch(epoch: int) -> dict[str, Any]:
        evaluated = {}
        if due(cfg.eval_every, epoch + 1, cfg.epochs):
            for prefix in ("val", "test"):
                if feed.has(prefix):
                    evaluated |= evaluate_batches(model, feed.evaluation(prefix), env, prepare, prefix)
        return {**evaluated, "lr": current_lr(optimizer), **chosen, **feed.epoch_metrics()}

    # Diverged also when the loss is far above a uniform guess's ln(C): LARS at lr 1e4 keeps finite weights
    # through batch norm's scale invariance while its loss is in the tens of thousands.
    epochs = Epochs(train, evaluate_epoch, watched=lambda epoch: model, classifies=lambda epoch: True,
                    loss_limit=cfg.divergence_factor * math.log(data.num_classes))
    state.setup_seconds = time.perf_counter() - entered
    return run_epochs(cfg, env, state, modules, cfg.epochs, epochs, telemetry)


def make_feed(cfg: TrialConfig, env: WorkerEnv, data, shard: Shard) -> MemoryFeed | StreamedFeed:
    """This worker's batches: indexed on the device, or decoded by the trial's own CPUs beyond the first."""
    if not isinstance(data, StreamedData):
        return MemoryFeed(data, shard, cfg.seed, env.device)
    stream = StreamFeed(data.catalog, data.train, {"val": data.val, "test": data.test} if data.val is not None
                        else {"test": data.test}, shard, decode_workers(), env.device)
    return StreamedFeed(stream, cfg.seed)


def compiled(network: nn.Module, cfg: TrialConfig) -> nn.Module:
    """`torch.compile`d for `compile=true` (the model's own parameters and state dict are unchanged)."""
    return torch.compile(network) if cfg.compile else network
