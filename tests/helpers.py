"""Classes the tests point ``_target_`` at from outside the package, as a user's own module would."""

import json
from pathlib import Path

import lightning as L
import torch
from torch import nn


class EpochLog(L.Callback):
    """Appends each epoch that starts training to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "global_step": trainer.global_step}) + "\n")


class TinyMLP(nn.Module):
    """A user's own network."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)


class Stripes(torch.utils.data.Dataset):
    """A user's own dataset: 8x8 grey images with a bright horizontal (class 0) or vertical (class 1) stripe."""

    classes = ["horizontal", "vertical"]

    def __init__(self, size: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 40, (size, 1, 8, 8), dtype=torch.uint8, generator=generator)
        self.targets = [i % 2 for i in range(size)]
        for i, target in enumerate(self.targets):
            position = i % 8
            if target == 0:
                self.images[i, 0, position, :] = 255
            else:
                self.images[i, 0, :, position] = 255

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


class StepLog(L.Callback):
    """Appends, at the start of every training batch, the global step and the learning rate about to be used."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with self.path.open("a") as f:
            f.write(json.dumps({"step": trainer.global_step, "lr": lr}) + "\n")


class ValLog(L.Callback):
    """Appends each validated epoch's ``val/*`` metrics."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, **metrics}) + "\n")


class DigitsWithout(torch.utils.data.Dataset):
    """The digits without some classes (a test set in which a class has no images)."""

    def __init__(self, drop: list[int]):
        from image_classification.data import Digits

        digits = Digits()
        self.classes = digits.classes
        keep = [i for i, t in enumerate(digits.targets) if t not in drop]
        self.images, self.targets = digits.images[keep], [digits.targets[i] for i in keep]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class SaveTestLogits(L.Callback):
    """Saves the test step's logits, in loader order, and which image each is (``datamodule.example_ids``)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.logits: list[torch.Tensor] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self.logits.append(outputs["logits"].cpu())

    def on_test_end(self, trainer, pl_module) -> None:
        ids = trainer.datamodule.example_ids("test")
        torch.save({"logits": torch.cat(self.logits), "ids": ids}, self.path)


class Brighten(nn.Module):
    """A user's own batch transform: ``(images, labels) -> (images + amount, labels)``."""

    def __init__(self, amount: float):
        super().__init__()
        self.amount = amount

    def forward(self, images, *rest):
        return (images + self.amount, *rest)


class PoisonBatch(L.Callback):
    """Makes the images of one training batch NaN (``epoch``, ``batch``): what a diverging run feeds the loss.
    A run that skips such batches must leave the weights as they were: checked after the batch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch
        self.before: list[torch.Tensor] = []

    def _poisoned(self, trainer, batch_idx: int) -> bool:
        return trainer.current_epoch == self.epoch and batch_idx == self.batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._poisoned(trainer, batch_idx):
            batch[0].fill_(float("nan"))
            self.before = [p.detach().clone() for p in pl_module.state_dict().values()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._poisoned(trainer, batch_idx):
            after = list(pl_module.state_dict().values())
            assert all(torch.equal(a, b) for a, b in zip(self.before, after, strict=True)), (
                "a skipped batch changed the weights or the batch-norm statistics"
            )


class BreakCheckpointSaving(L.Callback):
    """From epoch ``epoch`` on, every checkpoint save writes half a file, then fails as ``how`` says: ``kill``
    (the process is killed mid-write, SIGKILL) or ``full`` (the disk is full: OSError ENOSPC)."""

    def __init__(self, epoch: int, how: str):
        self.epoch, self.how = epoch, how
        self.save = torch.save

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            torch.save = self.broken

    def broken(self, obj, f, *args, **kwargs):
        import errno
        import io
        import os
        import signal

        buffer = io.BytesIO()
        self.save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as file:
            file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            file.flush()
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        torch.save = self.save


class SignalSelf(L.Callback):
    """Sends this process ``signal`` (a name: SIGTERM, SIGUSR1) in batch ``batch`` of the ``stage`` given
    (train or validation, in epoch ``epoch``; sanity: the sanity check; test): what a scheduler pre-empting the
    job does."""

    def __init__(self, epoch: int, batch: int, signal: str, stage: str = "train"):
        self.epoch, self.batch, self.signal, self.stage = epoch, batch, signal, stage

    def _send(self, trainer, stage: str, batch_idx: int) -> None:
        import os
        import signal

        epoch = trainer.current_epoch if stage in ("train", "validation") else self.epoch
        if stage == self.stage and epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._send(trainer, "train", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._send(trainer, "sanity" if trainer.sanity_checking else "validation", batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._send(trainer, "test", batch_idx)


class RankLearningRates(L.Callback):
    """Appends, after each training epoch, this process's learning rate and the val/loss it sees (what a plateau
    schedule and the checkpoints compare) to ``<directory>/rank<N>.jsonl``."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        val_loss = float(trainer.callback_metrics["val/loss"])
        with (self.directory / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "lr": lr, "val_loss": val_loss}) + "\n")


class RankTestImages(L.Callback):
    """Writes how many test images this process scored to ``<directory>/rank<N>.txt``."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.count = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.count += len(batch[1])

    def on_test_end(self, trainer, pl_module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.txt").write_text(str(self.count))


class SlowDownload(torch.utils.data.Dataset):
    """A dataset whose download (``download=True``) takes ``seconds`` and appends when it started and ended to
    ``<root>/downloads.txt``: two downloads at once show as overlapping intervals."""

    def __init__(self, root: str, download: bool = False, seconds: float = 0.5):
        import os
        import time

        if download:
            with open(Path(root) / "downloads.txt", "a") as log:
                start = time.monotonic()
                time.sleep(seconds)
                log.write(f"{os.getpid()} {start} {time.monotonic()}\n")
        self.targets = [0, 1] * 4

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.zeros(1, 8, 8, dtype=torch.uint8), self.targets[index]


class CopyAtStep(L.Callback):
    """Copies ``source`` to ``path`` at the start of the batch that makes global step ``step``: what a checkpoint
    file held then."""

    def __init__(self, source: str, path: str, step: int):
        self.source, self.path, self.step = Path(source), Path(path), step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.path.write_bytes(self.source.read_bytes())
