"""Linear evaluation: a frozen backbone that stays frozen, and a linear head that learns what its features hold."""

import pytest
import torch
from torch import nn

import trainer
from image_classification import load_network
from image_classification.config import instantiate
from image_classification.networks import Backbone, JigsawCNN, LinearProbe


def small_backbone_file(path) -> JigsawCNN:
    network = JigsawCNN(
        0, in_chans=1, channels=[8, 16], kernel_sizes=[3, 3], strides=[1, 1], pool_after=[0], pool_size=2
    )
    with torch.no_grad():  # batch-norm statistics of a trained network, not the defaults
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    torch.save(network.state_dict(), path)
    return network


def test_the_backbone_gets_no_gradient_and_its_weights_and_statistics_do_not_change(make_config, tmp_path):
    saved = small_backbone_file(tmp_path / "backbone.pt")
    cfg = make_config(
        "experiment=linear-eval",
        f"network.backbone.checkpoint={tmp_path / 'backbone.pt'}",
        "network.backbone.network.channels=[8,16]",
        "network.backbone.network.kernel_sizes=[3,3]",
        "network.backbone.network.strides=[1,1]",
        "network.backbone.network.pool_after=[0]",
        "debug=limit",
    )
    report = trainer.train(cfg)
    # 15 training steps later, the rebuilt probe's backbone holds the file's weights and running statistics
    probe = load_network(report["last_checkpoint"])
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(probe.backbone.network.state_dict()[name], value, msg=name)


def test_only_the_head_trains_and_the_backbone_stays_in_eval_mode():
    probe = LinearProbe(
        Backbone(JigsawCNN(0, in_chans=1, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[])), 3
    )
    probe.train()
    assert not probe.backbone.network.training and probe.head.training
    probe(torch.randn(4, 1, 8, 8)).sum().backward()
    assert all(p.grad is None for p in probe.backbone.parameters())
    assert all(p.grad is not None for p in probe.head.parameters())


class OneHotLabels(nn.Module):
    """A backbone whose features are the one-hot labels written into the images' first pixel."""

    num_features, num_classes = 10, 0

    def forward(self, images):
        return nn.functional.one_hot(images[:, 0, 0, 0].long(), 10).float()


@pytest.mark.parametrize("cached", [False, True])
def test_features_that_are_the_labels_score_100_percent(cached):
    torch.manual_seed(0)
    labels = torch.randint(10, (200,))
    images = torch.zeros(200, 1, 4, 4)
    images[:, 0, 0, 0] = labels.float()
    probe = LinearProbe(Backbone(OneHotLabels()), 10, normalize=True)
    inputs = probe.backbone(images) if cached else images  # cached: the features computed once
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(inputs), labels).backward()
        optimizer.step()
    probe.eval()
    assert (probe(inputs).argmax(dim=1) == labels).all()


def test_a_backbone_must_be_built_as_a_feature_extractor():
    with pytest.raises(ValueError, match="build it with num_classes=0"):
        Backbone(JigsawCNN(10, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[]))


@pytest.mark.parametrize("network", ["resnet18", "vit_ti16", "small_cnn"])
def test_any_network_config_is_a_backbone(make_config, network):
    cfg = make_config("experiment=linear-eval", f"network@network.backbone.network={network}", "debug=fdr")
    probe = instantiate(cfg.network, "network")
    assert probe.head[-1].in_features == probe.backbone.num_features
    report = trainer.train(cfg)
    assert 0.0 <= report["metrics"]["test/acc"] <= 1.0
