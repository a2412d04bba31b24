"""Linear evaluation: cached features against the backbone in every step, and our logistic regression against
scikit-learn's, on the same data.

    python benchmarks/linear_eval.py [--epochs 30] [--backbone jigsaw_cnn_small] [--image-size 32] [--seeds 1]

1. ``strategy=cached`` and ``strategy=end_to_end`` of ``experiment=linear-eval`` for the same number of epochs:
   the wall time of each run (``train()``: features extracted from scratch, an empty cache; fitting; testing),
   the ratio end_to_end / cached, and each test accuracy.
2. On the same cached features: ``strategy=logistic`` (L-BFGS, CLIP's L2 search on the validation split) and
   ``strategy=cached`` with its own defaults (100 epochs), against scikit-learn's
   ``LogisticRegression(solver="lbfgs")`` with the same search over ``C``, and with its default ``C=1``: the
   test accuracy and time of each.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trainer  # noqa: E402
from image_classification.config import compose, instantiate, quiet_library_noise, run_config_policy  # noqa: E402
from image_classification.evaluation import LogisticRegression, clear_memory  # noqa: E402

QUIET = [
    "print_config=false",
    "logger=none",
    "++callbacks.rich_progress_bar=null",
    "++callbacks.rich_model_summary=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def run(overrides: list[str], workdir: Path) -> dict:
    clear_memory()
    cfg = compose([*QUIET, f"paths.output_dir={workdir / 'run'}", f"paths.cache_dir={workdir / 'cache'}", *overrides])
    report = trainer.train(cfg)
    return {
        "seconds": report["wall_time_s"],
        "acc": report["metrics"]["test/acc"],
        "l2": (report["fit"] or {}).get("l2"),  # the L2 strength strategy=logistic chose
    }


def scikit_learn(train, val, test, exponents, ours: float) -> dict:
    """scikit-learn's lbfgs logistic regression on standardized features, like ours: with the same search
    (C = 1 / (l2 * N) over the same L2 strengths, best validation accuracy, then validation loss), at the L2
    strength our search chose, and with its default C=1."""
    from sklearn.linear_model import LogisticRegression as Scikit
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    x_train, x_val, x_test = (scaler.transform(s[0]) for s in (train, val, test))

    def fit(l2: float | None):
        start = time.perf_counter()
        model = Scikit(C=1 / (l2 * len(x_train)) if l2 else 1.0, max_iter=1000).fit(x_train, train[1])
        return model, time.perf_counter() - start

    start = time.perf_counter()
    fitted = [fit(10**e)[0] for e in exponents]
    best = max(fitted, key=lambda m: (m.score(x_val, val[1]), -log_loss(val[1], m.predict_proba(x_val))))
    results = {"searched": {"acc": best.score(x_test, test[1]), "seconds": time.perf_counter() - start, "C": best.C}}
    for name, l2 in (("at_our_l2", ours), ("default", None)):
        model, seconds = fit(l2)
        results[name] = {"acc": model.score(x_test, test[1]), "seconds": seconds, "C": model.C}
    return results


def against_scikit(overrides: list[str], workdir: Path) -> dict:
    cfg = compose([*QUIET, f"paths.output_dir={workdir / 'run'}", f"paths.cache_dir={workdir / 'cache'}", *overrides])
    with run_config_policy():
        datamodule = instantiate(cfg.data, "data")
        datamodule.setup("fit")
    train, val, test = (tuple(t.numpy() for t in datamodule.cached_features(s)) for s in ("train", "val", "test"))
    ours = run([*overrides, "strategy=logistic"], workdir / "logistic")
    cached = run([*overrides, "strategy=cached"], workdir / "cached")
    fitter = LogisticRegression()
    exponents = np.arange(fitter.start_exponents[0], fitter.start_exponents[-1] + 1e-9, 1 / fitter.steps_per_decade)
    return {"ours": ours, "cached": cached, **scikit_learn(train, val, test, exponents, ours["l2"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="jigsaw_cnn_small", help="a network config, built as the backbone")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--no-scikit", action="store_true", help="part 1 only: cached against end_to_end")
    args = parser.parse_args()
    quiet_library_noise()
    base = [
        "experiment=linear-eval",
        f"network@network.backbone.network={args.backbone}",
        f"data.image_size={args.image_size}",
    ]
    times = {"cached": [], "end_to_end": []}
    for seed in range(1, args.seeds + 1):
        for strategy in times:
            with tempfile.TemporaryDirectory() as tmp:
                result = run(
                    [*base, f"strategy={strategy}", f"trainer.max_epochs={args.epochs}", f"seed={seed}"], Path(tmp)
                )
            times[strategy].append(result)
            print(
                f"seed {seed}: {strategy:10s} {result['seconds']:7.1f} s  test acc {100 * result['acc']:.2f}%",
                flush=True,
            )
    closed = None
    if not args.no_scikit:
        with tempfile.TemporaryDirectory() as tmp:
            closed = against_scikit([*base, "seed=1"], Path(tmp))

    print(f"\n{args.backbone} at {args.image_size} px, {args.epochs} epochs, {args.seeds} seed(s), batch 64")
    print(f"{'strategy':12s}{'wall s (median)':>16s}{'test acc (mean)':>17s}")
    for strategy, results in times.items():
        seconds = statistics.median(r["seconds"] for r in results)
        print(f"{strategy:12s}{seconds:16.1f}{100 * statistics.mean(r['acc'] for r in results):16.2f}%")
    ratio = statistics.median(r["seconds"] for r in times["end_to_end"]) / statistics.median(
        r["seconds"] for r in times["cached"]
    )
    print(f"ratio end_to_end / cached: {ratio:.1f}x (goal >= 10x)")
    if closed is None:
        return
    print("\non the same cached features (seed 1):")
    ours, default = closed["ours"], closed["default"]
    print(f"  logistic (ours, L2 searched)        {100 * ours['acc']:6.2f}%  run {ours['seconds']:.1f} s")
    print(
        f"  scikit-learn lbfgs, same search     {100 * closed['searched']['acc']:6.2f}%  "
        f"fits {closed['searched']['seconds']:.1f} s (C={closed['searched']['C']:.3g})"
    )
    at_ours = closed["at_our_l2"]
    line = f"{100 * at_ours['acc']:6.2f}%  fit {at_ours['seconds']:.1f} s (C={at_ours['C']:.3g})"
    print(f"  scikit-learn lbfgs, our L2          {line}")
    print(f"  scikit-learn lbfgs, C=1             {100 * default['acc']:6.2f}%  fit {default['seconds']:.1f} s")
    cached = closed["cached"]
    print(f"  cached linear head, 100 epochs      {100 * cached['acc']:6.2f}%  run {cached['seconds']:.1f} s")
    for reference in ("searched", "at_our_l2", "default"):
        gap = max(abs(closed[k]["acc"] - closed[reference]["acc"]) for k in ("ours", "cached"))
        print(f"largest gap of ours (logistic, cached) to scikit-learn {reference}: {100 * gap:.2f} points (goal <= 1)")


if __name__ == "__main__":
    main()
