"""Every choice of every config group composes and instantiates into a working object."""

import functools
import random
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    CONFIGS,
    choices,
    compose_config,
    write_cifar10,
    write_image_folder,
    write_imagenet,
    write_mnist,
    write_tiny_imagenet,
)
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from image_classification.config import check_types, instantiate, instantiate_each
from image_classification.errors import UserError
from image_classification.make_shards import main as make_shards

GROUPS = [
    "data",
    "network",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "experiment",
    "hp_search",
    "cluster",
    "strategy",
    "debug",
]


def test_every_group_has_choices():
    for group in GROUPS:
        assert choices(group), f"configs/{group}/ has no choices"


@pytest.mark.parametrize("choice", choices("data"))
def test_data(make_config, tmp_path, choice):
    data_dir = tmp_path / "data"
    extra = []
    if choice == "mnist":
        write_mnist(data_dir)
    elif choice == "cifar10":
        write_cifar10(data_dir)
    elif choice == "image_folder":
        extra = [f"data.root={write_image_folder(data_dir / 'photos')}", "data.image_size=32", "data.num_workers=0"]
    elif choice == "imagenet":
        extra = [f"data.root={write_imagenet(data_dir / 'imagenet')}", "data.image_size=32", "data.batch_size=4"]
    elif choice == "tiny_imagenet":
        extra = [f"data.root={write_tiny_imagenet(data_dir / 'tiny')}", "data.num_classes=3", "data.num_workers=0"]
    elif choice == "jigsaw_folder":
        root = write_image_folder(data_dir / "photos")
        extra = [f"data.root={root}", "data.resize=48", "data.crop_size=48", "data.image_size=12", "data.num_workers=0"]
    elif choice == "shards":
        photos = write_image_folder(data_dir / "photos")
        make_shards(["data=image_folder", f"data.root={photos}", f"out={data_dir / 'shards'}", "data.num_workers=0"])
        extra = [f"data.root={data_dir / 'shards'}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0"]
    cfg = make_config(f"data={choice}", *extra)
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    datamodule.trainer = SimpleNamespace(training=True)  # as Lightning applies the batch transforms
    images, labels = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert images.dtype == torch.float32
    # an image, or a jigsaw puzzle's stack of tiles
    assert images.shape[-3:] == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    assert int(labels.max()) < cfg.data.num_classes
    for split in ("val", "test"):
        assert len(datamodule.datasets[split]) > 0


# What a network choice needs besides its file: `network=timm` names its architecture on the command line;
# the jigsaw networks take puzzles (data=jigsaw says how many tiles).
NETWORK_EXTRA = {
    "timm": ["network.model_name=resnet18"],
    "jigsaw": ["data=jigsaw"],
    "jigsaw_small": ["data=jigsaw"],
    "open_clip": ["network.model_name=ViT-S-32", "network.image_size=32", "data.channels=3"],
}


def tiny_size(choice: str) -> int:
    """32 px; 64 for Swin, whose last stage would otherwise attend within 1x1 windows (no gradient there)."""
    return 64 if choice.startswith("swin") else 32


@pytest.mark.parametrize("choice", choices("network"))
def test_network_forward_backward(make_config, choice):
    """At a tiny size (32 or 64 px, 1 channel, 10 classes): right output shape, no NaNs, a gradient on every
    trainable parameter. The weights are nudged first (zero-initialised layers, such as the last norm of a
    ResNet block, would cut the gradient to the layers before them) and stochastic depth is off (eval)."""
    size = tiny_size(choice)
    cfg = make_config(f"network={choice}", f"data.image_size={size}", *NETWORK_EXTRA.get(choice, []))
    network = instantiate(cfg.network, "network").eval()
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.01 * torch.randn_like(param))
    x = torch.randn(2, cfg.data.channels, size, size)
    if "n_tiles" in cfg.data and "trunk" in cfg.network:  # puzzles: 2 x tiles x C x H x W
        x = torch.randn(2, cfg.data.n_tiles**2, cfg.data.channels, size, size)
    logits = network(x)
    assert logits.shape == (2, cfg.data.num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for name, param in network.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("choice, millions", [("resnet50", 25.6), ("vit_b16", 86.6), ("swin_b", 87.8)])
def test_parameter_counts_match_the_papers(make_config, choice, millions):
    """At 1000 classes, 3 channels and 224 px, as the papers count them."""
    cfg = make_config(f"network={choice}", "data.num_classes=1000", "data.channels=3", "data.image_size=224")
    network = instantiate(cfg.network, "network")
    assert round(sum(p.numel() for p in network.parameters()) / 1e6, 1) == millions


@pytest.mark.parametrize("choice", choices("loss"))
def test_loss(make_config, choice):
    loss_fn = instantiate(make_config(f"loss={choice}").loss, "loss")
    logits = torch.randn(8, 10, requires_grad=True)
    targets = torch.arange(8) % 10
    loss = loss_fn(logits, targets)
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0
    assert logits.grad is not None
    soft = torch.nn.functional.one_hot(targets, 10).float()
    torch.testing.assert_close(loss_fn(logits, soft), loss)


@pytest.mark.parametrize("choice", choices("optimizer"))
def test_optimizer_takes_a_step(make_config, choice):
    factory = instantiate(make_config(f"optimizer={choice}").optimizer, "optimizer")
    assert isinstance(factory, functools.partial)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = factory(params=[weight])
    (weight**2).sum().backward()
    optimizer.step()
    assert (weight < 1).all()


@pytest.mark.parametrize("choice", choices("scheduler"))
def test_scheduler(make_config, choice):
    cfg = make_config(f"scheduler={choice}")
    config = instantiate(cfg.scheduler, "scheduler", _convert_="all")
    if choice == "none":
        assert config is None
        return
    assert config["interval"] in ("step", "epoch")
    factory = config["scheduler"]
    if factory.keywords.get("total_steps", 0) is None:
        factory = functools.partial(factory, total_steps=20)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    scheduler = factory(optimizer)
    for _ in range(5):
        optimizer.step()
        scheduler.step(1.0) if "monitor" in config else scheduler.step()
    assert optimizer.param_groups[0]["lr"] > 0


@pytest.mark.parametrize("choice", choices("trainer"))
def test_trainer(make_config, choice):
    """Built on the CPU (the test overrides set the accelerator), with each choice's other settings."""
    cfg = make_config(f"trainer={choice}")
    trainer = instantiate(cfg.trainer, "trainer", logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert str(trainer.precision) == cfg.trainer.precision


# Loggers whose package is optional: without it, the choice fails in one line that says what to install.
OPTIONAL_LOGGERS = {"wandb": "wandb", "mlflow": "mlflow"}


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers(make_config, group):
    import importlib.util

    for choice in choices(group):
        package = OPTIONAL_LOGGERS.get(choice) if group == "logger" else None
        if package and importlib.util.find_spec(package) is None:
            with pytest.raises(
                UserError, match=rf"logger {choice} needs a package that is not installed: .*pip install"
            ):
                instantiate_each(make_config(f"{group}={choice}")[group], group)
            continue
        objects = instantiate_each(make_config(f"{group}={choice}")[group], group)
        assert (len(objects) == 0) == (choice == "none"), choice


def test_paths_are_strings(make_config):
    for choice in choices("paths"):
        paths = make_config(f"paths={choice}").paths
        assert all(isinstance(v, str) and v for v in paths.values())


@pytest.mark.parametrize("choice", choices("hp_search"))
def test_hp_search(make_config, tmp_path, choice):
    """The sweep overlay composes with a sampler and a search space that Hydra's override parser accepts."""
    with initialize_config_dir(config_dir=str(CONFIGS)):
        cfg = compose("train", overrides=[f"hp_search={choice}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.max_failure_rate > 0, "one failed trial must not end the sweep"
    assert sweeper.storage and sweeper.study_name, "the study must persist so a second run resumes it"
    sampler = instantiate(sweeper.sampler, "sampler")
    assert type(sampler).__name__.endswith("Sampler")
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert all(o.is_sweep_override() for o in parsed)
    for override in parsed:  # every searched key exists in the composed config, every searched choice as a file
        key = override.key_or_group
        if "/" in key:
            assert key in cfg.hydra.runtime.choices, key
            assert all((CONFIGS / key / f"{value}.yaml").is_file() for value in override.sweep_string_iterator())
        else:
            assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize("experiment", choices("experiment"))
@pytest.mark.parametrize("choice", choices("debug"))
def test_debug_overlay_survives_an_experiment(make_config, experiment, choice):
    """`experiment=X debug=Y` keeps every debug setting: debug composes after experiment."""
    overlay = OmegaConf.merge(
        *(OmegaConf.load(CONFIGS / "debug" / f"{name}.yaml") for name in dict.fromkeys(["default", choice]))
    )
    cfg = make_config(f"experiment={experiment}", f"debug={choice}")
    composed = OmegaConf.to_container(cfg, resolve=False)
    for section, values in OmegaConf.to_container(overlay, resolve=False).items():
        if section in ("defaults", "task_name"):
            continue
        for key, value in values.items():
            assert composed[section][key] == value, f"{section}.{key}"
    assert cfg.task_name == "debug"


def every_choice():
    for group in sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in ("hydra", "paths")):
        for choice in choices(group):
            yield group, choice


@pytest.mark.parametrize("group, choice", list(every_choice()))
def test_every_shipped_value_has_the_type_its_target_declares(make_config, group, choice):
    base = ["experiment=linear-eval"] if group == "strategy" else []  # a choice of linear evaluation
    check_types(make_config(*base, f"{group}={choice}"))  # raises on a value its _target_ does not take


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs must be a whole number or null (for lightning.pytorch.Trainer)"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs must be a whole number or null"),
        ("trainer.deterministic=maybe", "trainer.deterministic must be true or false or 'warn' or null"),
        ("callbacks.best_checkpoint.save_top_k=one", "callbacks.best_checkpoint.save_top_k must be a whole number"),
        (
            "data.val_fraction=some",
            "data.val_fraction must be a number (for image_classification.DataModule), not the text 'some'",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named_before_anything_runs(make_config, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_types(make_config(override))


WRONG_VALUES = ["abc", "nan", "-1", "0", "''"]  # text for a number, NaN, a negative or zero count, empty text


def leaf_keys(node, prefix=""):
    """The dotted keys of a config's leaves (lists and ``_target_``-like keys left out)."""
    from omegaconf import DictConfig, ListConfig

    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from leaf_keys(child, f"{prefix}{key}.")
        elif not isinstance(child, ListConfig) and not str(key).startswith("_"):
            yield f"{prefix}{key}"


@pytest.mark.slow
def test_wrong_values_for_any_leaf_key_are_one_line_errors_or_run_never_a_traceback(tmp_path, monkeypatch):
    """Every leaf key of the default config with a wrong value, in a fast dev run: a UserError (the one line the
    command prints) or a run, never another exception (a traceback). The keys take the wrong values in turn,
    from a random offset (printed when it fails), so that runs over time try every pair."""
    import logging

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import trainer

    monkeypatch.chdir(tmp_path)  # a wrong value taken as a relative path (callbacks.report.path=abc) writes here
    keys = [k for k in leaf_keys(compose_config(tmp_path, "debug=fdr")) if not k.startswith(("paths.", "hydra."))]
    assert len(keys) > 60
    offset = random.randrange(len(WRONG_VALUES))
    tracebacks = []
    logging.disable(logging.WARNING)
    try:
        for i, key in enumerate(keys):
            value = WRONG_VALUES[(i + offset) % len(WRONG_VALUES)]
            try:
                trainer.train(compose_config(tmp_path / "runs" / key, "debug=fdr", f"{key}={value}"))
            except (UserError, OmegaConfBaseException, HydraException):
                pass
            except Exception as err:
                tracebacks.append(f"{key}={value}: {type(err).__name__}: {err}"[:300])
    finally:
        logging.disable(logging.NOTSET)
    assert not tracebacks, f"offset {offset}:\n" + "\n".join(tracebacks)
