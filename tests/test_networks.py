"""timm networks from config: starting weights, weight decay groups, EMA, channels-last and compile."""

import logging

import pytest
import torch
import torchvision

import trainer
from image_classification import load_network
from image_classification.checkpoint import METADATA_KEY
from image_classification.config import instantiate
from image_classification.errors import UserError
from image_classification.networks import timm_network

QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "logger=none",
]


def test_a_torchvision_state_dict_loads_into_timm_resnet(tmp_path):
    torchvision_net = torchvision.models.resnet18(num_classes=10)
    torch.save(torchvision_net.state_dict(), tmp_path / "resnet18.pth")
    network = timm_network("resnet18", num_classes=10, checkpoint=tmp_path / "resnet18.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(network(x), torchvision_net.eval()(x))


def test_a_head_for_other_classes_is_left_out_with_a_warning(tmp_path, caplog):
    source = timm_network("resnet18", num_classes=1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "imagenet.pth")  # nested, as timm saves
    with caplog.at_level(logging.WARNING):
        network = timm_network("resnet18", num_classes=7, checkpoint=tmp_path / "imagenet.pth")
    assert caplog.text.count("the classifier head (fc.bias, fc.weight) is not loaded, other shapes in the file") == 1
    torch.testing.assert_close(network.conv1.weight, source.conv1.weight)
    assert network.fc.weight.shape == (7, 512)


def test_a_file_of_another_architecture_is_refused(tmp_path):
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(UserError, match="none of the .* tensors .* belongs to ResNet"):
        timm_network("resnet18", num_classes=10, checkpoint=tmp_path / "alexnet.pth")


def test_vit_position_embeddings_are_resized_by_timm_when_the_image_size_changes(tmp_path):
    big = timm_network("vit_tiny_patch16_224", num_classes=10, img_size=64, patch_size=8)
    torch.save(big.state_dict(), tmp_path / "vit.pth")
    small = timm_network(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, checkpoint=tmp_path / "vit.pth"
    )
    assert small.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(small.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize(
    "bad", [{"model_name": "resnet_50"}, {"checkpoint_path": "x.pth"}, {"pretrained_cfg_overlay": {}}]
)
def test_timm_network_refuses_unknown_names_and_side_doors(bad):
    arguments = {"model_name": "resnet18", "num_classes": 2, **bad}
    with pytest.raises(ValueError, match="did you mean resnet50|does not take"):
        timm_network(**arguments)


def test_our_checkpoint_starts_a_network_and_load_network_ignores_starting_weights(make_config, tmp_path):
    first = trainer.train(make_config("network=timm", "network.model_name=resnet18", "data.image_size=32", *QUICK))
    weights = torch.load(first["last_checkpoint"], weights_only=True)["state_dict"]
    cfg = make_config(
        "network=timm",
        "network.model_name=resnet18",
        "data.image_size=32",
        f"network.checkpoint={first['last_checkpoint']}",
        f"paths.output_dir={tmp_path / 'second'}",
        *QUICK,
    )
    started = instantiate(cfg.network, "network")
    torch.testing.assert_close(started.conv1.weight, weights["network.conv1.weight"])
    second = trainer.train(cfg)
    (tmp_path / "run").rename(tmp_path / "moved")  # the starting weights are gone; the checkpoint is enough
    network = load_network(second["last_checkpoint"])
    saved = torch.load(second["last_checkpoint"], weights_only=True)
    assert saved[METADATA_KEY]["config"]["network"]["checkpoint"] == first["last_checkpoint"]
    torch.testing.assert_close(network.conv1.weight, saved["state_dict"]["network.conv1.weight"])


def test_no_weight_decay_on_norms_biases_and_tokens(make_config):
    cfg = make_config(
        "network=vit_ti8",
        "data.image_size=32",
        "module.decay_norm_and_bias=false",
        "optimizer.weight_decay=0.05",
        "scheduler=none",
    )
    module = trainer.build_module(cfg)
    groups = module.parameter_groups()
    names = {id(p): n for n, p in module.network.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= exempt
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} <= decay
    assert len(decay) + len(exempt) == len(names)
    optimizer = module.optimization(None)["optimizer"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.05]


def test_ema_weights_are_validated_tested_saved_and_loaded(make_config, tmp_path):
    cfg = make_config("callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.max_epochs=2", *QUICK)
    report = trainer.train(cfg)
    checkpoint = torch.load(report["last_checkpoint"], weights_only=True)
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    weight = "network.head.1.weight"
    assert not torch.equal(average[weight], raw[weight]), "the average must differ from the raw weights"
    torch.testing.assert_close(load_network(report["last_checkpoint"]).head[1].weight, average[weight])
    # the test scored the average: its loss over the test batches is the reported one, the raw weights' is not
    best = torch.load(report["tested_checkpoint"], weights_only=True)
    module = trainer.build_module(cfg)
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    loader = iter(datamodule.test_dataloader())
    batches = [datamodule.on_after_batch_transfer(next(loader), 0) for _ in range(2)]
    losses = {}
    for name, state in (("average", best["state_dict"]), ("raw", best["current_model_state"])):
        module.load_state_dict(state)
        module.eval()
        with torch.no_grad():
            losses[name] = sum(module.loss(module(x), y).item() * len(y) for x, y, _ in batches) / sum(
                len(y) for _, y, _ in batches
            )
    assert report["metrics"]["test/loss"] == pytest.approx(losses["average"], rel=1e-5)
    assert losses["average"] != pytest.approx(losses["raw"], rel=1e-3)


def test_channels_last_and_compile_train(make_config):
    cfg = make_config("module.channels_last=true", "module.compile={backend: eager}", "trainer.max_epochs=1", *QUICK)
    report = trainer.train(cfg)
    assert 0.0 <= report["metrics"]["test/acc"] <= 1.0
    state = torch.load(report["last_checkpoint"], weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k], "compiling must not rename the checkpoint's keys"


def test_pretrained_weights_that_cannot_be_downloaded_are_one_line_at_once(tmp_path, monkeypatch):
    # offline: about 50 s of retries, then "network: ConnectError: [Errno -2] Name or service not known"
    import time

    from huggingface_hub import constants

    from image_classification.networks import OpenCLIPVisual, hub

    monkeypatch.setattr(hub, "_reachable", lambda host: False)  # no network, whatever this machine has
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and nothing cached
    start, offline = time.monotonic(), constants.HF_HUB_OFFLINE
    with pytest.raises(UserError, match=r"network.pretrained=true: timm's pretrained weights for resnet18 could not "
                       r"be downloaded \(.*\); .* network.checkpoint=<file>"):  # fmt: skip
        timm_network("resnet18", num_classes=10, pretrained=True)
    with pytest.raises(UserError, match=r"network.pretrained: open_clip's openai weights of ViT-B-32 could not be"):
        OpenCLIPVisual("ViT-B-32", pretrained="openai")
    assert time.monotonic() - start < 20
    assert offline == constants.HF_HUB_OFFLINE  # the hub is back as it was
