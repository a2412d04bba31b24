"""Draw the learning rate of a configured run over its whole length, without training:

    python -m image_classification.plot_lr experiment=imagenet-vit [--steps-per-epoch 1251] [--out lr.png]

The overrides are trainer.py's. The optimizer and scheduler are the ones the run would build (the module's
own ``optimization``), stepped as Lightning steps them (``interval``, ``frequency``, gradient accumulation);
the rate of every optimizer step goes to a PNG and to TensorBoard (``lr`` against the step).
"""

import argparse
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig

from image_classification.config import (
    build_module,
    compose,
    device_count,
    instantiate,
    run_config_policy,
    user_message,
)
from image_classification.errors import UserError

log = logging.getLogger("plot_lr")


def steps_per_epoch(cfg: DictConfig) -> int:
    """Training batches per epoch and device, from the data (set up, not read) and the trainer's limits."""
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    devices = device_count(cfg.trainer.accelerator, cfg.trainer.devices) * cfg.trainer.get("num_nodes", 1)
    batches = datamodule.train_batches(devices)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit) if isinstance(limit, float) else batches


def learning_rates(cfg: DictConfig, batches: int) -> list[float]:
    """The learning rate of each optimizer step of the run ``cfg`` describes, with ``batches`` per epoch."""
    module = build_module(cfg)
    epochs, accumulate = cfg.trainer.max_epochs, cfg.trainer.get("accumulate_grad_batches", 1)
    optimizer_steps = epochs * sum(1 for b in range(1, batches + 1) if b % accumulate == 0 or b == batches)
    run = SimpleNamespace(
        max_epochs=epochs,
        num_training_batches=batches,
        accumulate_grad_batches=accumulate,
        estimated_stepping_batches=optimizer_steps,
    )
    optimization = module.optimization(run)
    optimizer, config = optimization["optimizer"], optimization.get("lr_scheduler")
    if config is not None and config.get("monitor"):
        raise UserError(f"{type(config['scheduler']).__name__} follows {config['monitor']}: it cannot be drawn ahead")
    interval, frequency = (config.get("interval", "epoch"), config.get("frequency", 1)) if config else (None, 1)
    rates = []
    for epoch in range(epochs):
        for b in range(1, batches + 1):  # as Lightning: an optimizer step, then maybe a scheduler step
            if b % accumulate == 0 or b == batches:
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()  # no gradients: nothing moves, but schedulers see a stepped optimizer
                if interval == "step" and b % frequency == 0:
                    config["scheduler"].step()
        if interval == "epoch" and (epoch + 1) % frequency == 0:
            config["scheduler"].step()
    return rates


def draw(rates: list[float], epochs: int, title: str, png: Path, tensorboard: Path) -> None:
    """The rates against epochs to ``png``, and against optimizer steps to TensorBoard under ``tensorboard``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    png.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot([epochs * s / len(rates) for s in range(len(rates))], rates)
    axis.set(xlabel="epoch", ylabel="learning rate", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)
    with SummaryWriter(str(tensorboard)) as writer:
        for step, rate in enumerate(rates):
            writer.add_scalar("lr", rate, step)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="trainer.py's overrides (experiment=..., trainer.max_epochs=...)")
    parser.add_argument(
        "--steps-per-epoch", type=int, help="training batches per epoch; default: counted from the data"
    )
    parser.add_argument("--out", type=Path, help="the PNG (default: logs/lr/<task_name>.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with run_config_policy():
            cfg = compose([*args.overrides, "paths.output_dir=logs/lr", "print_config=false"])
            batches = args.steps_per_epoch or steps_per_epoch(cfg)
            rates = learning_rates(cfg, batches)
    except UserError as err:
        sys.exit(f"Error: {user_message(err)} (or give --steps-per-epoch for data that is not here)")
    png = args.out or Path(cfg.paths.log_dir) / "lr" / f"{cfg.task_name}.png"
    tensorboard = png.parent / "tensorboard" / png.stem
    draw(rates, cfg.trainer.max_epochs, f"{cfg.task_name}: {len(rates)} optimizer steps", png, tensorboard)
    log.info(
        f"{len(rates)} steps, peak {max(rates):.3g}, last {rates[-1]:.3g}: {png}; tensorboard --logdir {tensorboard}"
    )
    return rates


if __name__ == "__main__":
    main()
