"""Pictures for TensorBoard, drawn with Pillow: a confusion matrix, per-class accuracy bars and captioned image
grids. Each returns a 3 x H x W uint8 tensor (``SummaryWriter.add_image``'s default layout); drawing one takes
milliseconds, so a run can draw them at every validation."""

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

WHITE = (255, 255, 255)
INK = (30, 30, 30)
DARK_BLUE = (8, 48, 107)
BAR = (66, 133, 196)
WRONG = (200, 30, 30)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's own scalable font (no font files needed); its bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def text_size(text: str, face: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=face)
    return right - left, bottom - top


def to_tensor(image: Image.Image) -> torch.Tensor:
    return (
        torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        .view(image.height, image.width, 3)
        .permute(2, 0, 1)
    )


def upwards(text: str, face: ImageFont.ImageFont) -> Image.Image:
    """``text`` written bottom to top, on white."""
    width, height = text_size(text, face)
    label = Image.new("RGB", (width + 4, height + 6), WHITE)
    ImageDraw.Draw(label).text((2, 1), text, fill=INK, font=face, anchor="la")
    return label.rotate(90, expand=True, fillcolor=WHITE)


def shade(fraction: float) -> tuple[int, int, int]:
    """White for 0 to dark blue for 1."""
    return tuple(round(w + (d - w) * fraction) for w, d in zip(WHITE, DARK_BLUE, strict=True))


def confusion_image(
    confusion: torch.Tensor, class_names: Sequence[str], title: str = "", max_labelled: int = 30
) -> torch.Tensor:
    """The confusion matrix (rows: true class, columns: predicted class), each row shaded by the fraction of
    its images; with counts and class names up to ``max_labelled`` classes, a plain heat map beyond."""
    counts = confusion.detach().cpu().long()
    n = counts.shape[0]
    shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    face, small = font(12), font(11)
    labelled = n <= max_labelled
    names = [str(c) for c in class_names]
    if labelled:
        cell = max(24, text_size(str(int(counts.max())), small)[0] + 8)
        label_width = max(text_size(name, face)[0] for name in names) + 10
    else:
        cell, label_width = max(1, min(8, 800 // n)), 0
    title_height = text_size(title or "x", face)[1] + 12
    axis = text_size("predicted", face)[1] + 8
    left = label_width + axis
    top = title_height + (label_width if labelled else 0) + axis
    width = max(left + n * cell + 10, text_size(title, face)[0] + 12)
    image = Image.new("RGB", (width, top + n * cell + 10), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), title, fill=INK, font=face)
    draw.text((left, title_height), "predicted", fill=INK, font=face)
    rows = upwards("true", face)
    image.paste(rows, (2, top + max(0, (n * cell - rows.height) // 2)))
    if not labelled:  # a heat map: one block of cell x cell pixels per pair of classes, drawn as an array
        white, dark = torch.tensor(WHITE, dtype=torch.float), torch.tensor(DARK_BLUE, dtype=torch.float)
        colors = (white + (dark - white) * shares[..., None]).round().byte()
        colors = colors.repeat_interleave(cell, dim=0).repeat_interleave(cell, dim=1)
        image.paste(Image.fromarray(colors.numpy(), "RGB"), (left, top))
        return to_tensor(image)
    fractions = shares.tolist()
    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=shade(fractions[i][j]))
            if counts[i, j] > 0:
                text = str(int(counts[i, j]))
                width, height = text_size(text, small)
                color = WHITE if fractions[i][j] > 0.5 else INK
                draw.text((x + (cell - width) / 2, y + (cell - height) / 2 - 1), text, fill=color, font=small)
    for i, name in enumerate(names):
        width, height = text_size(name, face)
        draw.text((left - width - 6, top + i * cell + (cell - height) / 2 - 1), name, fill=INK, font=face)
        column = upwards(name, face)
        image.paste(column, (left + i * cell + (cell - column.width) // 2, top - column.height - 6))
    draw.rectangle((left - 1, top - 1, left + n * cell, top + n * cell), outline=INK)
    return to_tensor(image)


def bar_chart_image(
    values: Sequence[float], labels: Sequence[str], notes: Sequence[str] = (), title: str = "", bar_length: int = 200
) -> torch.Tensor:
    """Horizontal bars, one per label, for values in [0, 1], each followed by its percentage and its note."""
    face = font(12)
    row = text_size("Xg", face)[1] + 8
    label_width = max((text_size(str(label), face)[0] for label in labels), default=0) + 10
    notes = list(notes) or [""] * len(values)
    texts = [f"{100 * v:.1f}%" + (f"  {note}" if note else "") for v, note in zip(values, notes, strict=True)]
    text_width = max((text_size(t, face)[0] for t in texts), default=0) + 10
    title_height = text_size(title or "x", face)[1] + 12
    width = max(label_width + bar_length + text_width + 10, text_size(title, face)[0] + 12)
    image = Image.new("RGB", (width, title_height + row * len(values) + 8), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), title, fill=INK, font=face)
    for i, (value, label, text) in enumerate(zip(values, labels, texts, strict=True)):
        y = title_height + i * row
        width = text_size(str(label), face)[0]
        draw.text((label_width - width - 6, y + 3), str(label), fill=INK, font=face)
        end = label_width + round(bar_length * min(max(value, 0.0), 1.0))
        draw.rectangle((label_width, y + 2, label_width + bar_length, y + row - 3), fill=(235, 235, 235))
        if end > label_width:
            draw.rectangle((label_width, y + 2, end, y + row - 3), fill=BAR)
        draw.text((label_width + bar_length + 6, y + 3), text, fill=INK, font=face)
    return to_tensor(image)


def image_grid(
    images: torch.Tensor,
    captions: Sequence[str],
    colors: Sequence[tuple[int, int, int]] = (),
    title: str = "",
    columns: int = 8,
    tile: int = 96,
) -> torch.Tensor:
    """Images (N x C x H x W, values in [0, 1], 1 or 3 channels) in a grid, each scaled to about ``tile``
    pixels on its longer side (small ones by whole factors, so pixels stay sharp) with its caption below."""
    face = font(11)
    pictures = []
    for picture in images.detach().float().cpu().clamp(0, 1):
        picture = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture[:3]
        array = (picture * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
        pil = Image.fromarray(array, "RGB")
        side = max(pil.size)
        if side < tile:
            factor = max(1, tile // side)
            pil = pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST)
        elif side > tile:
            scale = tile / side
            pil = pil.resize(
                (max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.LANCZOS
            )
        pictures.append(pil)
    if not pictures:
        return to_tensor(Image.new("RGB", (1, 1), WHITE))
    colors = list(colors) or [INK] * len(pictures)
    width = max(max(p.width for p in pictures), *(text_size(c, face)[0] for c in captions)) + 8
    caption_height = max(text_size(c or "x", face)[1] for c in captions) + 8
    height = max(p.height for p in pictures) + caption_height + 8
    title_height = text_size(title, face)[1] + 12 if title else 0
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    full_width = max(columns * width, text_size(title, face)[0] + 12 if title else 0)
    image = Image.new("RGB", (full_width, title_height + rows * height), WHITE)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((6, 4), title, fill=INK, font=face)
    for k, (picture, caption, color) in enumerate(zip(pictures, captions, colors, strict=True)):
        x, y = (k % columns) * width, title_height + (k // columns) * height
        image.paste(picture, (x + (width - picture.width) // 2, y + 4))
        draw.multiline_text((x + 4, y + 6 + picture.height), caption, fill=color, font=face, spacing=2)
    return to_tensor(image)
