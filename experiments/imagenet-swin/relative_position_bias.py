"""Draw Swin's relative position bias: the index that maps each (query, key) pair of a window to a row of
the learned table, and, for one head, the bias every query gets towards every key.

    python experiments/imagenet-swin/relative_position_bias.py [--checkpoint run.ckpt] [--out figure.png]

Without a checkpoint the table is timm's initial one (truncated normal, std 0.02); with one of this
framework's Swin checkpoints it is what that run learned (its first block).
"""

import argparse
from pathlib import Path

import torch
from timm.models.swin_transformer import WindowAttention, get_relative_position_index


def first_window_attention(checkpoint: Path | None, window: int) -> WindowAttention:
    if checkpoint is None:
        torch.manual_seed(0)
        return WindowAttention(dim=96, num_heads=3, window_size=window)
    from image_classification import load_network

    network = load_network(checkpoint)
    return next(m for m in network.modules() if isinstance(m, WindowAttention))


def draw(attention: WindowAttention, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    win_h, win_w = attention.window_size
    index = get_relative_position_index(win_h, win_w)
    table = attention.relative_position_bias_table.detach()  # ((2h-1)(2w-1), heads)
    bias = table[index.view(-1), 0].view(win_h * win_w, win_h * win_w)  # head 0, query x key
    query = (win_h // 2) * win_w + win_w // 2  # the window's centre token
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    shown = axes[0].imshow(index, cmap="viridis")
    axes[0].set(title=f"relative_position_index ({win_h * win_w}x{win_w * win_h})", xlabel="key", ylabel="query")
    figure.colorbar(shown, ax=axes[0], fraction=0.046)
    shown = axes[1].imshow(table[:, 0].view(2 * win_h - 1, 2 * win_w - 1), cmap="coolwarm")
    axes[1].set(
        title=f"table, head 0: one value per offset ({2 * win_h - 1}x{2 * win_w - 1})", xlabel="dx", ylabel="dy"
    )
    ticks = range(0, 2 * win_w - 1, max(1, win_w // 2))
    axes[1].set_xticks(list(ticks), [str(t - win_w + 1) for t in ticks])
    axes[1].set_yticks(list(ticks), [str(t - win_h + 1) for t in ticks])
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    shown = axes[2].imshow(bias[query].view(win_h, win_w), cmap="coolwarm")
    axes[2].set(title="bias from the centre token to each key", xlabel="key column", ylabel="key row")
    axes[2].set_xticks(range(win_w))
    axes[2].set_yticks(range(win_h))
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a Swin checkpoint of this framework")
    parser.add_argument("--window", type=int, default=7, help="window size without a checkpoint (7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".png"))
    args = parser.parse_args(argv)
    draw(first_window_attention(args.checkpoint, args.window), args.out)
    return args.out


if __name__ == "__main__":
    print(main())
