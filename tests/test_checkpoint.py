"""A checkpoint can come from anyone: rebuilding its network runs nothing but a network's constructor."""

import copy

import pytest
import torch
import torchvision
from conftest import CONFIGS

import trainer
from image_classification import load_network, networks
from image_classification.checkpoint import METADATA_KEY
from image_classification.config import run_config_policy
from image_classification.errors import UserError
from image_classification.trust import TRUSTED_PREFIXES, is_trusted_network

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint of the default network, loaded as a dict."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("trained")
    with run_config_policy():
        report = trainer.train(compose_config(tmp, *QUICK))
    return torch.load(report["last_checkpoint"], weights_only=True)


def with_network(checkpoint, network_config, path):
    tampered = copy.deepcopy(checkpoint)
    tampered[METADATA_KEY]["config"]["network"] = network_config
    torch.save(tampered, path)
    return path


def shell(marker):
    return {"_target_": "os.system", "command": f"touch {marker}"}


def payloads(marker):
    """Configs that would run `touch marker` if anything reachable from a checkpoint could instantiate freely."""
    small = {"_target_": "image_classification.networks.SmallCNN", "num_classes": 10, "in_channels": 1}
    return {
        "package instantiate": {
            "_target_": "image_classification.config.instantiate",
            "_recursive_": False,
            "node": shell(marker),
            "what": "x",
        },
        "hydra instantiate": {"_target_": "hydra.utils.instantiate", "_recursive_": False, "config": shell(marker)},
        "load_network trusting os": {
            "_target_": "image_classification.checkpoint.load_network",
            "path": "x.ckpt",
            "trusted_targets": ["os.*"],
        },
        "train": {"_target_": "trainer.train", "cfg": {}},
        "policy switch": {"_target_": "image_classification.config.run_config_policy"},
        "os.system": shell(marker),
        "alias through the package": {
            "_target_": "image_classification.checkpoint.subprocess.run",
            "args": ["touch", marker],
        },
        "alias through torch.nn": {"_target_": "torch.nn.modules.module.torch.load", "f": str(marker)},
        "nested in a network's argument": {**small, "widths": shell(marker)},
        "nested in _args_": {"_target_": "torch.nn.Sequential", "_args_": [shell(marker)]},
        "interpolation": {**small, "dropout": "${oc.env:HOME}"},
    }


@pytest.mark.parametrize("name", list(payloads("m")))
def test_a_checkpoint_cannot_run_code_through_its_network_config(checkpoint, tmp_path, name):
    marker = tmp_path / "pwned"
    path = with_network(checkpoint, payloads(marker)[name], tmp_path / "tampered.ckpt")
    with run_config_policy(), pytest.raises(UserError):  # even from inside a run's unrestricted policy
        load_network(path)
    with pytest.raises(UserError):
        load_network(path, trusted_targets=["image_classification.networks.*"])
    assert not marker.exists()


def test_a_partial_network_config_is_refused(checkpoint, tmp_path):
    config = {**checkpoint[METADATA_KEY]["config"]["network"], "_partial_": True}
    with pytest.raises(UserError, match="builds a .*, not a network"):
        load_network(with_network(checkpoint, config, tmp_path / "partial.ckpt"))


def test_torch_and_torchvision_networks_rebuild(checkpoint, tmp_path):
    for config, network in [
        ({"_target_": "torchvision.models.resnet18", "num_classes": 10}, torchvision.models.resnet18(num_classes=10)),
        (
            {
                "_target_": "torch.nn.Sequential",
                "_args_": [
                    {"_target_": "torch.nn.Flatten"},
                    {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 10},
                ],
            },
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        ),
    ]:
        saved = copy.deepcopy(checkpoint)
        saved["state_dict"] = {f"network.{k}": v for k, v in network.state_dict().items()}
        rebuilt = load_network(with_network(saved, config, tmp_path / "net.ckpt"))
        x = torch.randn(2, 3, 32, 32) if "resnet" in config["_target_"] else torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(rebuilt(x), network.eval()(x))


def test_the_trusted_networks_are_networks():
    """networks.__all__ is the allow-list: everything in it is a network class or a function that returns one."""
    import inspect

    for name in networks.__all__:
        target = getattr(networks, name)
        if inspect.isclass(target):
            assert issubclass(target, torch.nn.Module), name
        else:
            assert inspect.signature(target).return_annotation is torch.nn.Module, name
        assert is_trusted_network(target)
    assert not is_trusted_network(torch.load)
    assert all(not p.startswith(("trainer", "hydra", "os")) for p in TRUSTED_PREFIXES)


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONFIGS / "network").glob("*.yaml")))
def test_every_shipped_network_is_trusted(make_config, choice):
    import hydra

    cfg = make_config(f"network={choice}", *(["network.model_name=resnet18"] if choice == "timm" else []))
    assert is_trusted_network(hydra.utils.get_object(cfg.network._target_)), cfg.network._target_


def test_a_timm_network_rebuilds_without_its_starting_weights(checkpoint, tmp_path):
    network = networks.timm_network("resnet18", num_classes=10, in_chans=1)
    saved = copy.deepcopy(checkpoint)
    saved["state_dict"] = {f"network.{k}": v for k, v in network.state_dict().items()}
    config = {
        "_target_": "image_classification.networks.timm_network",
        "model_name": "resnet18",
        "num_classes": 10,
        "in_chans": 1,
        "checkpoint": str(tmp_path / "gone.pth"),  # would fail if it were read
        "pretrained": True,  # would go to the hub if it were honoured
    }
    rebuilt = load_network(with_network(saved, config, tmp_path / "timm.ckpt"))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), network.eval()(x))
