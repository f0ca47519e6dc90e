"""The UnlearnCanvas classifier loader on a randomly initialised ViT-L/16 saved in the documented layout.

UnlearnCanvas ships its judges as ``.pth`` files: a dict with the timm
``vit_large_patch16_224`` state dict under ``model_state_dict`` (head 1024 -> C).
The real files cannot be downloaded here, so this builds the real architecture
with random weights once, saves it that way, and checks our loader gives the
original module's logits (after its Resize 224 + Normalize(0.5, 0.5)).
"""

import pytest
import torch

N_CLASSES = 20  # the object classifier (style50_cls.pth)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    timm = pytest.importorskip("timm")
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=N_CLASSES)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # N(0, 0.02) everywhere: timm's own init of 300M weights is several times slower
        for p in model.parameters():
            p.normal_(0, 0.02, generator=g)
    path = tmp_path_factory.mktemp("vit") / "style50_cls.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    return model, path


def test_loader_gives_the_saved_modules_logits(vit_file):
    from eval.classifiers import load_unlearncanvas_vit

    model, path = vit_file
    judge = load_unlearncanvas_vit(path, N_CLASSES)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, original = judge(x), model((x - 0.5) / 0.5)
    assert ours.shape == (1, N_CLASSES)
    assert torch.equal(ours, original)
    assert not judge.training
    assert sum(p.numel() for p in judge.parameters()) == sum(p.numel() for p in model.parameters())  # ViT-L/16: ~303M


def test_loader_refuses_a_file_for_another_class_count(vit_file):
    from eval.classifiers import ClassifierError, load_unlearncanvas_vit

    _, path = vit_file
    with pytest.raises(
        ClassifierError,
        match=r"head.weight has shape \(20, 1024\), expected \(51, 1024\); wrong file for --style-classifier",
    ):
        load_unlearncanvas_vit(path, 51, option="--style-classifier")
