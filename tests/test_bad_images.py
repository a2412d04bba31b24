"""Unusual images are converted, broken ones skipped (named once, counted, within a budget) or stop the run, and
check_data lists them all."""

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import photo_crops, write_image_folder
from PIL import Image
from test_errors import assert_clear_error, run_trainer

from image_classification.data.images import BadImage, load_image, read_image

BROKEN = {"truncated.jpg": "image file is truncated", "empty.jpg": "empty file", "notes.jpg": "not an image"}
UNUSUAL = ("cmyk.jpg", "rgba.png", "deep.png", "grey.jpg", "palette.png")


def write_awkward_folder(root):
    """A flat folder of class folders (held-out splits), one class also holding a truncated JPEG, a zero-byte
    file, a text file named .jpg, and a CMYK JPEG, an RGBA PNG, a 16-bit PNG, a grey and a palette image."""
    write_image_folder(root, splits=(), per_class=10)
    folder = root / "cat"
    photo = Image.open(folder / "1.jpg").convert("RGB")
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("<html>a page saved as an image</html>")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    transparent = photo.convert("RGBA")
    transparent.putalpha(0)
    transparent.save(folder / "rgba.png")
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(folder / "deep.png")
    photo.convert("L").save(folder / "grey.jpg")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    return root, photo


def as_pixels(read, path) -> np.ndarray:
    """What ``read`` makes of ``path``, as an H x W x 3 array, after checking it is 8-bit RGB."""
    image = read(path)
    if isinstance(image, torch.Tensor):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        return image.permute(1, 2, 0).numpy().astype(float)
    assert image.mode == "RGB"
    return np.asarray(image, dtype=float)


@pytest.mark.parametrize("read", [load_image, read_image], ids=["PIL", "tensor"])
def test_unusual_images_become_8_bit_rgb_and_broken_ones_name_themselves(tmp_path, read):
    root, photo = write_awkward_folder(tmp_path / "photos")
    grey = np.asarray(photo.convert("L"), dtype=float)
    for name in UNUSUAL:
        pixels = as_pixels(read, root / "cat" / name)
        assert pixels.shape[1::-1] == photo.size, name
        assert np.array_equal(pixels, np.asarray(load_image(root / "cat" / name), dtype=float)) or name == "cmyk.jpg"
        if name == "rgba.png":  # fully transparent: white, as a viewer shows it
            assert pixels.min() == 255
        elif name in ("deep.png", "grey.jpg"):  # 16 bits scaled to 8, not clipped to white
            assert abs(pixels.mean(axis=2) - grey).mean() < 2, name
        else:
            assert abs(pixels - np.asarray(photo, dtype=float)).mean() < 6, name
    for name, reason in BROKEN.items():
        with pytest.raises(BadImage, match=re.escape(reason)) as caught:
            read(root / "cat" / name)
        assert caught.value.path == str(root / "cat" / name)


def run_on(tmp_path, root, *overrides):
    return run_trainer(tmp_path, "data=image_folder", f"data.root={root}", "data.image_size=32", "data.batch_size=8",
                       "data.num_workers=2", "trainer.max_epochs=2", "logger=none", *overrides)  # fmt: skip


@pytest.mark.slow
def test_broken_files_are_skipped_each_named_once_and_the_run_ends(tmp_path):
    root, _ = write_awkward_folder(tmp_path / "photos")
    result = run_on(tmp_path, root, "data.max_bad_images=3", "hydra.run.dir=logs/skip")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for name, reason in BROKEN.items():
        assert len(re.findall(rf"Skipped an unreadable image: .*/cat/{name} \(.*{reason}", output)) == 1, name
    assert "unreadable images skipped in this pass" in output
    assert (tmp_path / "logs/skip/metrics.json").is_file()

    over = run_on(tmp_path, root, "data.max_bad_images=0.001", "hydra.run.dir=logs/over")
    assert_clear_error(over, "unreadable images, more than data.max_bad_images allows", "check_data lists them all")


def test_raise_stops_at_the_first_broken_file_naming_it(tmp_path):
    root, _ = write_awkward_folder(tmp_path / "photos")
    result = run_on(tmp_path, root, "data.on_bad_image=raise", "hydra.run.dir=logs/raise")
    assert_clear_error(result, "cannot read ", "or skip such files with data.on_bad_image=skip")
    named = re.findall(r"cannot read \S*/cat/(\S+) ", result.stdout + result.stderr)
    assert len(named) == 1 and named[0] in BROKEN


def test_check_data_lists_every_problem_and_passes_clean_data(tmp_path):
    root, _ = write_awkward_folder(tmp_path / "photos" / "train")
    test = root.parent / "test"
    for name in ("astronaut", "cat", "coffee", "dog"):
        (test / name).mkdir(parents=True)
    for i, crop in enumerate(photo_crops(9, seed=1)):  # a test set of other photographs
        crop.save(test / ("cat", "coffee", "astronaut")[i % 3] / f"{i}.png")
    (test / "cat" / "copy.png").write_bytes((root / "coffee" / "3.jpg").read_bytes())
    (root / "dog").mkdir()  # a class whose one file is broken: no readable training image
    (root / "dog" / "only.jpg").write_bytes(b"")
    (test / "dog" / "fine.png").write_bytes((root / "cat" / "2.png").read_bytes())
    command = [sys.executable, "-m", "image_classification.check_data", "data=image_folder", "data.image_size=32"]
    result = subprocess.run([*command, f"data.root={root.parent}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for name in BROKEN:
        assert f"unreadable: {root}/cat/{name}" in output
    assert f"unreadable: {root}/dog/only.jpg (empty file)" in output
    assert "empty class: dog has no readable images in the train set" in output
    assert re.search(r"the same image in two splits: \S*/test/cat/copy.png \(test\) = \S*/train/coffee/3.jpg", output)
    assert re.search(r"the same image in two splits: \S*/test/dog/fine.png \(test\) = \S*/train/cat/2.png", output)
    assert "empty class: dog has no readable images in the val set" in output  # its one file is in neither
    # the grey JPEG and the 16-bit PNG of the same grey photo decode to the same pixels; one was held out
    assert re.search(r"the same image in two splits: \S*/train/cat/(grey.jpg|deep.png) \(\w+\) = ", output)
    assert "images checked: 4 unreadable, 2 empty classes, 3 images in more than one split" in output

    clean = write_image_folder(tmp_path / "clean", splits=(), per_class=10)
    result = subprocess.run([*command, f"data.root={clean}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 unreadable, 0 empty classes, 0 images in more than one split: nothing to fix" in result.stderr


def test_cached_features_stop_at_an_unreadable_image_naming_it(tmp_path):
    """Cached features are every image's or none: a broken file stops the run with one line naming it."""
    root, _ = write_awkward_folder(tmp_path / "photos")
    result = run_trainer(tmp_path, "experiment=linear-eval", "data=image_folder", f"data.root={root}",
                         "data.image_size=32", "data.num_workers=2", "logger=none")  # fmt: skip
    assert_clear_error(result, "cached features need every image", "check_data")
    output = result.stdout + result.stderr
    assert re.search(r"cannot read .*/cat/(truncated|empty|notes)\.jpg", output), output[-2000:]


@pytest.mark.parametrize("trainer", ["cpu", pytest.param("ddp_cpu", marks=pytest.mark.slow)])
def test_a_report_names_each_prediction_by_its_own_file_when_a_test_image_is_skipped(tmp_path, trainer):
    """An unreadable image in the middle of the test split: each prediction stays with its own file (the batch
    carries the images' ids), the broken file has none and is listed as unreadable, and no image goes missing."""
    import json

    root = write_image_folder(tmp_path / "photos", per_class=6)
    broken = root / "test" / "astronaut" / "2b.png"  # sorted between 2.png and 3.jpg
    broken.write_bytes(b"not a png")
    result = run_on(tmp_path, root, f"trainer={trainer}", "data.max_bad_images=1", "data.batch_size=4",
                    "trainer.max_epochs=1", "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    files = sorted(str(f) for f in (root / "test").rglob("*.*") if f != broken)
    assert sorted(e["id"] for e in report["examples"]) == files  # each once, the broken one not among them
    for example in report["examples"]:
        assert example["label"] == example["id"].split("/")[-2], example
    assert report["unreadable"] == [str(broken)]
    assert report["backbone"]["name"] == "SmallCNN (trained)"  # what was evaluated: a network trained here


def test_counts_are_said_in_the_singular_for_one():
    from image_classification.check_data import count

    assert [count(1, "image"), count(2, "image"), count(1, "class"), count(0, "empty class")] == [
        "1 image",
        "2 images",
        "1 class",
        "0 empty classes",
    ]
