"""The default job written as a plain PyTorch loop, no Lightning or Hydra: the baseline of overhead.py.

Same as ``python trainer.py``: scikit-learn digits, a held-out 20% test / 10% val split stratified by class
(scikit-learn's, so the same sizes and class proportions as ours, not the same images),
the 48-96-192 CNN with dropout 0.2, AdamW (lr 3e-3, wd 0.01), 10% linear warmup + cosine per step,
label smoothing 0.1, a random shift of up to 1 pixel per image and normalisation done on whole batches,
batch 64, 20 epochs, validation every epoch, and the test set scored with the weights of the lowest
validation loss. Prints one JSON line.
"""

import copy
import json
import math
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

EPOCHS, BATCH, LR, WD, SEED = 20, 64, 3e-3, 0.01, 42


class Split(Dataset):
    def __init__(self, images, labels, indices):
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        return self.images[j], self.labels[j]


def normalise(x):
    return (x.float() / 255 - 0.5) / 0.5


def shift(x, s=1):
    n, c, h, w = x.shape
    padded = F.pad(x, (s, s, s, s))
    dy, dx = torch.randint(0, 2 * s + 1, (n, 1)), torch.randint(0, 2 * s + 1, (n, 1))
    rows, cols = (dy + torch.arange(h))[:, None, :, None], (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def network():
    layers, channels = [], 1
    for stage, width in enumerate((48, 96, 192)):
        if stage:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels, 10))


def evaluate(model, loader):
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(normalise(x))
            loss += F.cross_entropy(logits, y, label_smoothing=0.1, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return loss / n, correct / n


def main():
    torch.manual_seed(SEED)
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = digits.target.tolist()
    n_test = round(0.2 * len(labels))
    n_val = round(0.1 * (len(labels) - n_test))
    rest, test = train_test_split(np.arange(len(labels)), test_size=n_test, stratify=labels, random_state=0)
    train, val = train_test_split(rest, test_size=n_val, stratify=[labels[i] for i in rest], random_state=0)
    train_loader = DataLoader(Split(images, labels, train), batch_size=BATCH, shuffle=True)
    val_loader = DataLoader(Split(images, labels, val), batch_size=BATCH)
    test_loader = DataLoader(Split(images, labels, test), batch_size=BATCH)

    model = network()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    total = EPOCHS * len(train_loader)
    warmup = round(0.1 * total)

    def factor(step):
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    best_loss, best_state = float("inf"), None
    for _ in range(EPOCHS):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(normalise(shift(x))), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_loss, _ = evaluate(model, val_loader)
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    _, test_acc = evaluate(model, test_loader)
    print(json.dumps({"test_acc": test_acc, "wall_time_s": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
