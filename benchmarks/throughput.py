"""Training throughput of a network config through this framework (our LightningModule, DataModule and
Lightning's Trainer) and through a plain PyTorch loop doing the same work: same network and initial weights,
optimizer, precision, memory format, batch size and synthetic data, in one process.

    python benchmarks/throughput.py [network=resnet50 ...] [--image-size 64] [--batch-size 32] [--steps 20]

Prints images/s of both and the ratio plain / ours (the framework's overhead: 1.00 is none). On a GPU it
runs in bf16 with channels-last and names the GPU.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_classification.config import (  # noqa: E402
    build_module,
    compose,
    instantiate,
    quiet_library_noise,
    run_config_policy,
)
from image_classification.data import DataModule  # noqa: E402


class Synthetic(torch.utils.data.Dataset):
    """Random images and labels, made once."""

    def __init__(self, size: int, image_size: int, num_classes: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(L.Callback):
    """The time from the start of training batch ``warmup`` to the end of the last one."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.end = time.perf_counter()


def ours(cfg, dataset, args, device, precision) -> float:
    torch.manual_seed(0)
    module = build_module(cfg)
    datamodule = DataModule(
        train_set=lambda: dataset,
        val_set=lambda: dataset,
        test_set=lambda: dataset,
        num_classes=cfg.data.num_classes,
        batch_size=args.batch_size,
    )
    clock = Clock(args.warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=datamodule)
    return args.steps * args.batch_size / (clock.end - clock.start)


def plain(cfg, dataset, args, device, precision) -> float:
    torch.manual_seed(0)
    network = instantiate(cfg.network, "network").to(device)
    if cfg.module.channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer, "optimizer")(params=[p for p in network.parameters() if p.requires_grad])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    network.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    step, start = 0, None
    while step < args.warmup + args.steps:
        for images, labels in loader:
            if step == args.warmup:
                synchronize(device)
                start = time.perf_counter()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if cfg.module.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.warmup + args.steps:
                break
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="trainer.py overrides (default: network=resnet50)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_library_noise()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    precision = "bf16-mixed" if gpu else "32-true"
    overrides = args.overrides or ["network=resnet50"]
    with run_config_policy():
        cfg = compose(
            [
                *overrides,
                "~experiment",
                "scheduler=none",
                "data.num_classes=1000",
                "data.channels=3",
                f"data.image_size={args.image_size}",
                f"module.channels_last={str(gpu).lower()}",
                "paths.output_dir=logs/throughput",
            ]
        )
        dataset = Synthetic((args.warmup + args.steps) * args.batch_size, args.image_size, cfg.data.num_classes)
        rates = {"plain": [], "ours": []}
        for _ in range(args.repeats):  # alternated, so that both see the machine in the same state
            for name, run in (("plain", plain), ("ours", ours)):
                rates[name].append(run(cfg, dataset, args, device, precision))
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{cfg.network.model_name if 'model_name' in cfg.network else cfg.network._target_} at {args.image_size} px, "
        f"batch {args.batch_size}, {precision}{', channels-last' if gpu else ''}, {where}"
    )
    for name, values in rates.items():
        print(f"{name:6s} {statistics.median(values):9.1f} images/s  ({', '.join(f'{v:.1f}' for v in values)})")
    print(f"overhead (plain / ours): {statistics.median(rates['plain']) / statistics.median(rates['ours']):.3f}")


if __name__ == "__main__":
    main()
