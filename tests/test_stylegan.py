"""pipelines.stylegan: the pure-PyTorch StyleGAN2, its pipeline, its files and rosinality conversion (tiny configs)."""

import argparse
import builtins
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import erase.core.patch
from erase.core.components import named_parameters
from erase.core.errors import EraseError
from erase.core.patch import ErasurePatch, apply_patch, remove_patch
from pipelines.stylegan import (
    Discriminator,
    Generator,
    ModulatedConv2d,
    StyleGANConfig,
    StyleGANPipeline,
    convert_rosinality_state_dict,
    infer_rosinality_config,
    load_rosinality,
    upfirdn2d,
)

CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16}


def tiny_config(**kw):
    return StyleGANConfig(**{"resolution": 32, "style_dim": 64, "n_mlp": 2, "channels": CHANNELS, **kw})


def tiny_generator(seed=0, **kw):
    """A random generator whose zero-initialised tensors (noise strengths, biases) are perturbed too, so every
    tensor matters to the output."""
    torch.manual_seed(seed)
    G = Generator(tiny_config(**kw)).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(("noise.weight", "bias")):
                p.add_(0.2 * torch.randn_like(p))
        G.w_avg.normal_()
    return G


@pytest.fixture
def pipe():
    return StyleGANPipeline(tiny_generator())


def one_line(e):
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_json_round_trip():
    c = StyleGANConfig(1024)
    assert c.z_dim == c.style_dim == 512 and c.n_mlp == 8 and c.lr_mlp == 0.01 and c.blur_kernel == (1, 3, 3, 1)
    assert c.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert StyleGANConfig(256, channel_multiplier=1).channels[256] == 64
    assert c.n_latent == 18 and StyleGANConfig(64).n_latent == 10 and tiny_config().n_latent == 8
    t = tiny_config(z_dim=48)
    text = json.dumps(t.to_dict())
    assert StyleGANConfig.from_dict(json.loads(text)) == t
    assert tiny_config().z_dim == 64
    with pytest.raises(EraseError, match="power of two"):
        StyleGANConfig(48)
    with pytest.raises(EraseError, match=r"lack the resolution\(s\) \[32\]"):
        StyleGANConfig(32, channels={4: 8, 8: 8, 16: 8})
    with pytest.raises(EraseError, match="unknown StyleGAN config field"):
        StyleGANConfig.from_dict({**t.to_dict(), "size": 3})


# ---------------------------------------------------------------------------------------------
# generator and discriminator


def test_shapes_ranges_and_outputs(pipe):
    G = pipe.generator
    z = torch.randn(3, 64)
    assert G.mapping(z).shape == (3, 64)
    assert G(z).shape == (3, 3, 32, 32)
    assert G.synthesis(G.mapping(z).unsqueeze(1).expand(-1, 8, -1), noise_mode="random").shape == (3, 3, 32, 32)
    assert G.n_latent == 2 * 5 - 2
    images = pipe(seeds=[0, 1, 2])
    assert len(images) == 3 and all(im.size == (32, 32) and im.mode == "RGB" for im in images)
    arr = pipe(seeds=[0, 1, 2], output_type="np")
    assert arr.shape == (3, 32, 32, 3) and arr.dtype == np.uint8
    assert np.array_equal(np.asarray(images[1]), arr[1])
    pt = pipe(seeds=[0, 1, 2], output_type="pt")
    assert pt.shape == (3, 3, 32, 32) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert np.abs(pt.permute(0, 2, 3, 1).numpy() * 255 - arr).max() <= 0.5 + 1e-3  # same image, rounded
    # z_dim may differ from style_dim
    Gz = Generator(tiny_config(z_dim=48))
    assert Gz.mapping(torch.randn(2, 48)).shape == (2, 64)
    with pytest.raises(EraseError, match=r"W\+ of shape \(N, 8, style_dim\)"):
        G.synthesis(torch.randn(2, 7, 64))
    with pytest.raises(EraseError, match="either seeds or latents"):
        pipe()


def test_pipeline_latents_z_and_wplus(pipe):
    G = pipe.generator
    z = pipe.seed_latents([5, 6])
    from_seeds = pipe(seeds=[5, 6], output_type="pt")
    assert torch.equal(pipe(latents=z, output_type="pt"), from_seeds)
    ws = G.mapping(z).unsqueeze(1).repeat(1, G.n_latent, 1)
    assert torch.allclose(pipe(latents=ws, output_type="pt"), from_seeds, atol=1e-6)
    with pytest.raises(EraseError, match=r"z \(N, 64\) or W\+ \(N, 8, 64\)"):
        pipe(latents=torch.randn(2, 8, 63))


def test_discriminator_shapes_any_batch_and_r1():
    cfg = tiny_config()
    D = Discriminator(cfg)
    for n in (1, 4, 5, 6):
        assert D(torch.randn(n, 3, 32, 32)).shape == (n,)
    real = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    grad.square().sum().backward()  # R1 needs double backward through every op
    assert [n for n, p in D.named_parameters() if p.grad is None] == [
        "out.bias"
    ]  # the logit's bias has no input gradient
    G = Generator(cfg)
    F.softplus(-D(G(torch.randn(4, 64), noise_mode="random"))).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


def test_minibatch_stddev_groups_like_rosinality():
    """Groups of 4 taken with a stride (samples m, m + N/4, ...): a sample's logit depends on its group only."""
    D = Discriminator(tiny_config()).eval()
    x = torch.randn(8, 16, 4, 4)
    feat = D.minibatch_stddev(x)[:, -1]
    group = x[[1, 3, 5, 7]]
    expected = (group.var(0, unbiased=False) + 1e-8).sqrt().mean()
    assert torch.allclose(feat[3], torch.full((4, 4), float(expected)), atol=1e-6)
    imgs = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        base = D(imgs)
        imgs[2] += 1.0
        moved = D(imgs)
    changed = (moved - base).abs() > 1e-6
    assert changed.tolist() == [True, False, True, False, True, False, True, False]


def test_upfirdn2d_is_a_true_convolution():
    """Against a loop over output pixels, with an asymmetric kernel (so a missing flip shows)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g)
    k = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 4.0]])
    for up, down, pad in [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (2, 2)), (2, 2, (-1, 1))]:
        xu = torch.zeros(2, 3, 5 * up, 6 * up)
        xu[:, :, ::up, ::up] = x
        xp = F.pad(xu, [pad[0], pad[1], pad[0], pad[1]])
        kh, kw = k.shape
        H, W = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
        ref = torch.zeros(2, 3, H, W)
        for y in range(H):
            for xx in range(W):
                ref[:, :, y, xx] = (xp[:, :, y : y + kh, xx : xx + kw] * k.flip([0, 1])).sum((2, 3))
        ref = ref[:, :, ::down, ::down]
        out = upfirdn2d(x, k, up=up, down=down, pad=pad)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5), (up, down, pad)


def _naive_blur(x, kernel, pad):
    """The blur the slow, obvious way: channels folded into the batch of a 1-channel conv."""
    n, c, h, w = x.shape
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]]).reshape(n * c, 1, h + sum(pad), w + sum(pad))
    out = F.conv2d(x, kernel.flip([0, 1])[None, None])
    return out.reshape(n, c, out.shape[2], out.shape[3])


@pytest.mark.parametrize("kind", ["demod", "upsample", "torgb"])
def test_nonfused_modulation_equals_fused_per_sample_weights(kind):
    """The non-fused path (scale input, shared conv, scale output by s^2 @ sum w^2) equals building each
    sample's modulated (and demodulated) weight and convolving it, as rosinality's fused path does."""
    torch.manual_seed(0)
    if kind == "torgb":
        m = ModulatedConv2d(16, 3, 1, 32, demodulate=False)
    else:
        m = ModulatedConv2d(16, 8, 3, 32, upsample=kind == "upsample")
    with torch.no_grad():
        m.modulation.bias.add_(torch.randn(16))  # styles far from 1, and of both signs
    x, w = torch.randn(4, 16, 6, 6), torch.randn(4, 32)
    out = m(x, w)
    ref = []
    for i in range(4):
        s = F.linear(w[i : i + 1], m.modulation.weight / math.sqrt(32), m.modulation.bias)[0]
        weight = m.weight * m.scale * s.view(1, -1, 1, 1)  # [out, in, k, k] for this sample
        if m.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum((1, 2, 3)) + 1e-8).view(-1, 1, 1, 1)
        if kind == "upsample":
            y = F.conv_transpose2d(x[i : i + 1], weight.transpose(0, 1), stride=2)
            k1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
            y = _naive_blur(y, torch.outer(k1, k1) / 64 * 4, (1, 1))  # rosinality: normalised kernel x factor^2
        else:
            y = F.conv2d(x[i : i + 1], weight, padding=weight.shape[-1] // 2)
        ref.append(y)
    ref = torch.cat(ref)
    assert out.shape == ref.shape == ((4, 8, 12, 12) if kind == "upsample" else (4, out.shape[1], 6, 6))
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


# ---------------------------------------------------------------------------------------------
# W+ layout

ROSINALITY_ROWS_32PX = [
    ["synthesis.conv1"],
    ["synthesis.to_rgb1", "synthesis.convs.0"],
    ["synthesis.convs.1"],
    ["synthesis.to_rgbs.0", "synthesis.convs.2"],
    ["synthesis.convs.3"],
    ["synthesis.to_rgbs.1", "synthesis.convs.4"],
    ["synthesis.convs.5"],
    ["synthesis.to_rgbs.2"],
]


def test_layers_of_row_is_rosinalitys_layout():
    G = tiny_generator()
    assert [G.layers_of_row(k) for k in range(G.n_latent)] == ROSINALITY_ROWS_32PX
    with pytest.raises(EraseError, match=r"rows 0\.\.7"):
        G.layers_of_row(8)


def test_changing_one_wplus_row_restyles_exactly_its_layers():
    """Hooks on every layer's style affine: perturbing row k changes the styles of layers_of_row(k), no other."""
    G = tiny_generator()
    modules = dict(G.named_modules())
    styled = [n for n, m in modules.items() if isinstance(m, ModulatedConv2d)]
    styled = [n[: -len(".conv")] for n in styled]
    assert len(styled) == 1 + 1 + 6 + 3
    seen, hooks = {}, []
    for name in styled:
        hooks.append(
            modules[name].conv.modulation.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(name, out.clone())
            )
        )
    ws = torch.randn(2, G.n_latent, 64)
    with torch.no_grad():
        G.synthesis(ws)
        base = dict(seen)
        covered = []
        for k in range(G.n_latent):
            ws2 = ws.clone()
            ws2[:, k] += 1.0
            G.synthesis(ws2)
            changed = sorted(n for n in styled if not torch.equal(seen[n], base[n]))
            assert changed == sorted(G.layers_of_row(k)), k
            covered += changed
    assert sorted(covered) == sorted(styled)  # every styled layer reads exactly one row
    for h in hooks:
        h.remove()


def test_const_noise_buffer_k_feeds_its_layer():
    """noises.noise_0 feeds conv1 and noises.noise_k feeds convs.{k-1}: perturbing buffer k changes that layer's
    output and no layer before it."""
    G = tiny_generator()
    order = ["synthesis.conv1"] + [f"synthesis.convs.{i}" for i in range(len(G.synthesis.convs))]
    modules = dict(G.named_modules())
    seen = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.clone())) for n in order]
    ws = torch.randn(1, G.n_latent, 64)
    with torch.no_grad():
        G.synthesis(ws)
        base = dict(seen)
        for k, layer in enumerate(order):
            buf = getattr(G.synthesis.noises, f"noise_{k}")
            saved = buf.clone()
            buf.add_(1.0)
            G.synthesis(ws)
            buf.copy_(saved)
            first = next(n for n in order if not torch.equal(seen[n], base[n]))
            assert first == layer, (k, first)
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------------------------------------
# seeds and truncation


def test_same_seed_same_image_whatever_the_batch(pipe):
    alone = pipe(seeds=[11], output_type="pt")
    batched = pipe(seeds=[3, 7, 11, 4], output_type="pt")
    shuffled = pipe(seeds=[7, 11, 3], output_type="pt", batch_size=2)
    assert torch.allclose(batched[2:3], alone, atol=1e-6)
    assert torch.allclose(shuffled[1:2], alone, atol=1e-6)
    assert torch.allclose(shuffled[0], batched[1], atol=1e-6)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)
    assert torch.equal(pipe.seed_latents([11])[0], torch.randn(64, generator=torch.Generator().manual_seed(11)))


def test_truncation(pipe):
    G = pipe.generator
    centre = G.synthesis(G.w_avg.expand(1, G.n_latent, -1)).detach()
    at_zero = pipe(seeds=[0, 1, 2], truncation_psi=0.0, output_type="pt")
    for img in at_zero:
        assert torch.allclose(img, ((centre[0] + 1) / 2).clamp(0, 1), atol=1e-6)
    w = G.mapping(pipe.seed_latents([4]))
    half = pipe(seeds=[4], truncation_psi=0.5, output_type="pt")
    ref = G.synthesis((G.w_avg + 0.5 * (w - G.w_avg)).unsqueeze(1).expand(-1, G.n_latent, -1)).detach()
    assert torch.allclose(half, ((ref + 1) / 2).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(half, pipe(seeds=[4], output_type="pt"), atol=1e-3)


def test_update_and_compute_w_avg():
    G = tiny_generator()
    old, w = G.w_avg.clone(), torch.randn(8, 64)
    G.update_w_avg(w, beta=0.9)
    assert torch.allclose(G.w_avg, 0.9 * old + 0.1 * w.mean(0), atol=1e-6)
    G.compute_w_avg(4096, seed=0)
    z = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(G.w_avg, G.mapping(z).mean(0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# files


def test_save_load_round_trip_bit_identical(pipe, tmp_path):
    out = pipe.save_pretrained(tmp_path / "gan")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generator.safetensors"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "stylegan2"
    loaded = StyleGANPipeline.from_pretrained(out)
    assert loaded.config == pipe.config and loaded.device == torch.device("cpu")
    assert set(loaded.components) == {"generator"}
    ours, theirs = pipe.generator.state_dict(), loaded.generator.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert "w_avg" in ours and "synthesis.noises.noise_6" in ours
    assert torch.equal(loaded(seeds=[0, 1], output_type="pt"), pipe(seeds=[0, 1], output_type="pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]  # no temp folder left


def test_half_precision_files_load_back_as_the_generator_dtype(pipe, tmp_path):
    out = pipe.save_pretrained(tmp_path / "gan", dtype=torch.float16)
    full = pipe.save_pretrained(tmp_path / "full")
    assert (out / "generator.safetensors").stat().st_size < 0.6 * (full / "generator.safetensors").stat().st_size
    loaded = StyleGANPipeline.from_pretrained(out).generator.state_dict()
    for k, v in pipe.generator.state_dict().items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.half().to(v.dtype)), k


def test_save_is_atomic_and_never_clobbers(pipe, tmp_path, monkeypatch):
    target = tmp_path / "gan"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(EraseError, match="overwrite=True") as e:
        pipe.save_pretrained(target)
    one_line(e)
    assert (target / "notes.txt").read_text() == "mine"

    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # a failure half way leaves the old folder as it was, and no temp folders
        m.setattr(safetensors.torch, "save_file", boom)
        with pytest.raises(OSError):
            pipe.save_pretrained(target, overwrite=True)
        with pytest.raises(OSError):
            pipe.save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]

    pipe.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "generator.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EraseError, match="is a file"):
        pipe.save_pretrained(tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert StyleGANPipeline.from_pretrained(pipe.save_pretrained(empty)).config == pipe.config


def test_from_pretrained_errors_name_the_fix(pipe, tmp_path):
    def err(path):
        with pytest.raises(EraseError) as e:
            StyleGANPipeline.from_pretrained(path)
        return one_line(e)

    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in err(tmp_path / "empty") and "save_pretrained" in err(tmp_path / "empty")
    good = pipe.save_pretrained(tmp_path / "good")
    assert "pass the StyleGAN folder" in err(good / "generator.safetensors")
    bad = pipe.save_pretrained(tmp_path / "bad")
    (bad / "generator.safetensors").unlink()
    torch.save({}, bad / "generator.pt")
    msg = err(bad)
    assert "no generator.safetensors" in msg and "generator.pt is not read" in msg
    (bad / "config.json").write_text("{not json")
    assert "not valid JSON" in err(bad)
    other = pipe.save_pretrained(tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "channels": {"4": 32, "8": 32, "16": 32, "32": 16}}))
    msg = err(other)
    assert "does not fit" in msg and "synthesis.convs.2.conv.weight" in msg and "re-save" in msg
    (other / "config.json").write_text(json.dumps({**cfg, "colour": 1}))
    assert "unknown StyleGAN config field" in err(other)
    (good / "generator.safetensors").write_bytes(b"garbage")
    assert "corrupt" in err(good)


# ---------------------------------------------------------------------------------------------
# rosinality checkpoints


def rosinality_state_dict(config, seed=0):
    """A g_ema state dict in rosinality's layout, written from its model.py (not from our module names), with
    random values everywhere, and the inverse mapping: rosinality key -> our key."""
    g = torch.Generator().manual_seed(seed)
    sd, ours = {}, {}
    ch, S = config.channels, config.style_dim

    def put(theirs, shape, our_key, scale=1.0):
        sd[theirs] = torch.randn(*shape, generator=g) * scale
        ours[theirs] = our_key

    for i in range(config.n_mlp):  # mapping weights are stored divided by lr_mlp, as rosinality initialises them
        put(
            f"style.{i + 1}.weight",
            (S, config.z_dim if i == 0 else S),
            f"mapping.layers.{i}.weight",
            1 / config.lr_mlp,
        )
        put(f"style.{i + 1}.bias", (S,), f"mapping.layers.{i}.bias")
    put("input.input", (1, ch[4], 4, 4), "synthesis.input.const")

    def styled(name, cin, cout):
        put(f"{name}.conv.weight", (1, cout, cin, 3, 3), f"synthesis.{name}.conv.weight")
        put(f"{name}.conv.modulation.weight", (cin, S), f"synthesis.{name}.conv.modulation.weight")
        put(f"{name}.conv.modulation.bias", (cin,), f"synthesis.{name}.conv.modulation.bias")
        put(f"{name}.noise.weight", (1,), f"synthesis.{name}.noise.weight")
        put(f"{name}.activate.bias", (cout,), f"synthesis.{name}.bias")

    def to_rgb(name, cin):
        put(f"{name}.conv.weight", (1, 3, cin, 1, 1), f"synthesis.{name}.conv.weight")
        put(f"{name}.conv.modulation.weight", (cin, S), f"synthesis.{name}.conv.modulation.weight")
        put(f"{name}.conv.modulation.bias", (cin,), f"synthesis.{name}.conv.modulation.bias")
        put(f"{name}.bias", (1, 3, 1, 1), f"synthesis.{name}.bias")

    styled("conv1", ch[4], ch[4])
    to_rgb("to_rgb1", ch[4])
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(k1, k1) / 64 * 4
    res = [4 * 2**i for i in range(int(math.log2(config.resolution)) - 1)]
    for b, (lo, hi) in enumerate(zip(res, res[1:])):
        styled(f"convs.{2 * b}", ch[lo], ch[hi])
        styled(f"convs.{2 * b + 1}", ch[hi], ch[hi])
        to_rgb(f"to_rgbs.{b}", ch[hi])
        sd[f"convs.{2 * b}.conv.blur.kernel"] = kernel.clone()
        sd[f"to_rgbs.{b}.upsample.kernel"] = kernel.clone()
    for k in range(1 + 2 * (len(res) - 1)):
        size = 2 ** ((k + 5) // 2)
        put(f"noises.noise_{k}", (1, 1, size, size), f"synthesis.noises.noise_{k}")
    return sd, ours


def test_convert_rosinality_key_by_key():
    cfg = tiny_config()
    sd, ours_of = rosinality_state_dict(cfg)
    assert infer_rosinality_config(sd) == cfg
    converted = convert_rosinality_state_dict(sd, cfg)
    own = Generator(cfg).state_dict()
    assert set(converted) == set(own) - {"w_avg"}  # every tensor of ours is filled ...
    assert sorted(ours_of.values()) == sorted(converted)  # ... each from exactly one rosinality tensor
    for theirs, ours in ours_of.items():
        assert converted[ours].shape == own[ours].shape, ours
        assert torch.equal(converted[ours].flatten(), sd[theirs].flatten()), (theirs, ours)
    G = Generator(cfg)
    G.load_state_dict({**converted, "w_avg": G.w_avg})

    def err(d):
        with pytest.raises(EraseError) as e:
            convert_rosinality_state_dict(d, cfg)
        return one_line(e)

    assert "missing convs.3.conv.weight" in err({k: v for k, v in sd.items() if k != "convs.3.conv.weight"})
    assert "unexpected d.final_linear.weight" in err({**sd, "d.final_linear.weight": torch.zeros(1)})
    msg = err({**sd, "to_rgbs.1.conv.modulation.bias": torch.zeros(17)})
    assert "misshaped to_rgbs.1.conv.modulation.bias [17] != [16]" in msg and "config" in msg
    assert "blur kernel" in err({**sd, "to_rgbs.0.upsample.kernel": torch.ones(4, 4)})
    other = tiny_config(channels={4: 32, 8: 16, 16: 16, 32: 16})
    with pytest.raises(EraseError, match=r"convs\.0\.conv\.weight \[1, 32, 32, 3, 3\] != \[1, 16, 32, 3, 3\]"):
        convert_rosinality_state_dict(sd, other)


# Outputs of rosinality's own model.py (its pure-PyTorch CPU ops; channel table overridden to CHANNELS) on
# rosinality_state_dict(tiny_config(), seed=0), noise from its buffers (randomize_noise=False), computed once
# outside this repository: per-image channel means, then out[:, :, [3, 17, 30], [29, 8, 14]] flattened.
ROSINALITY_GOLDEN = {
    "z": (
        [[-1.677709, -10.92345, 4.11445], [-1.112956, -1.618257, 0.287396]],
        [
            -0.442374,
            -0.124018,
            -3.710583,
            -8.594161,
            -12.675793,
            -10.418596,
            4.434579,
            4.101877,
            3.405631,
            -0.219329,
            -1.06704,
            -2.227719,
            -3.621488,
            -0.318922,
            -3.987335,
            1.032294,
            -0.365094,
            0.401439,
        ],
    ),
    "wplus": (
        [[-0.842758, -3.334142, -2.863328], [-1.461399, 1.308373, -1.113997]],
        [
            -1.892124,
            -0.623395,
            -0.659032,
            -6.351527,
            -1.396882,
            1.104755,
            -0.529646,
            -4.794281,
            -6.141326,
            0.44625,
            -1.971561,
            -2.495599,
            3.154476,
            0.355449,
            2.193686,
            1.0194,
            -2.605685,
            -1.542738,
        ],
    ),
}


def test_converted_generator_computes_rosinalitys_function():
    """Same outputs as rosinality's code on the same weights: z (mapping, every row the same w) and a W+ with
    distinct rows (row -> layer assignment), to float32 rounding."""
    cfg = tiny_config()
    sd, _ = rosinality_state_dict(cfg)
    G = Generator(cfg).eval()
    G.load_state_dict({**convert_rosinality_state_dict(sd, cfg), "w_avg": G.w_avg})
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    wp = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = {"z": G(z), "wplus": G.synthesis(wp)}
    for name, out in outputs.items():
        means, pixels = ROSINALITY_GOLDEN[name]
        assert torch.allclose(out.mean((2, 3)), torch.tensor(means), atol=1e-4), name
        assert torch.allclose(out[:, :, [3, 17, 30], [29, 8, 14]].flatten(), torch.tensor(pixels), atol=1e-4), name


def test_load_rosinality_from_torch_save(tmp_path):
    cfg = tiny_config()
    sd, _ = rosinality_state_dict(cfg)
    torch.save({"g_ema": sd, "g": sd, "d": {"x": torch.zeros(1)}, "ada_aug_p": 0.0}, tmp_path / "ckpt.pt")
    torch.save(sd, tmp_path / "bare.pth")
    pipe = load_rosinality(tmp_path / "ckpt.pt")
    assert pipe.config == cfg and pipe.name_or_path.endswith("ckpt.pt")
    G = Generator(cfg)
    G.load_state_dict({**convert_rosinality_state_dict(sd, cfg), "w_avg": G.w_avg})
    z = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pipe.generator.w_avg, G.mapping(z).mean(0), atol=1e-6)
    for k, v in G.state_dict().items():
        if k != "w_avg":
            assert torch.equal(pipe.generator.state_dict()[k], v), k
    bare = load_rosinality(tmp_path / "bare.pth", config=cfg)
    assert torch.equal(bare(seeds=[1], output_type="pt"), pipe(seeds=[1], output_type="pt"))
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "g_ema.safetensors"))
    assert load_rosinality(tmp_path / "g_ema.safetensors").config == cfg
    with pytest.raises(EraseError, match="does not exist"):
        load_rosinality(tmp_path / "none.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        EraseError, match="cannot read .* as a torch checkpoint|is corrupt or not a plain tensor checkpoint"
    ) as e:
        load_rosinality(tmp_path / "garbage.pt")
    one_line(e)
    torch.save({"model": {"a": 1}}, tmp_path / "odd.pt")
    with pytest.raises(EraseError, match="neither a 'g_ema' entry"):
        load_rosinality(tmp_path / "odd.pt")


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_really_executes_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()  # so the refusal tests below would see it if loading ran the payload


def test_train_py_checkpoint_is_refused_with_the_extraction_hint(tmp_path):
    sd, _ = rosinality_state_dict(tiny_config())
    torch.save({"g_ema": sd, "args": argparse.Namespace(size=32, n_mlp=2)}, tmp_path / "train.pt")
    with pytest.raises(EraseError) as e:
        load_rosinality(tmp_path / "train.pt")
    msg = one_line(e)
    assert "argparse.Namespace" in msg and "weights_only" in msg and 'torch.save(ckpt["g_ema"], "g_ema.pt")' in msg
    marker = tmp_path / "ran"
    torch.save(
        {"args": argparse.Namespace(hook=Payload(marker)), "evil": Payload(marker), "g_ema": sd}, tmp_path / "evil.pt"
    )
    with pytest.raises(EraseError, match="g_ema.pt") as e:
        load_rosinality(tmp_path / "evil.pt")
    one_line(e)
    assert not marker.exists()


def test_nvidia_pkl_is_refused_unread(tmp_path, monkeypatch):
    marker, pkl = tmp_path / "ran", tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": Payload(marker)}))
    real_open = builtins.open

    def guarded_open(file, *a, **k):
        assert str(file) != str(pkl), "the .pkl was opened"
        return real_open(file, *a, **k)

    def no_unpickling(*a, **k):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(EraseError) as e:
        load_rosinality(pkl)
    msg = one_line(e)
    assert "executes" in msg and "convert" in msg
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# erasure patches


def test_patch_apply_and_remove_bit_exact(pipe):
    params = named_parameters(pipe)
    assert all(n.startswith("generator.") for n in params) and "generator.mapping.layers.0.weight" in params
    names = ["generator.synthesis.convs.1.conv.weight", "generator.synthesis.to_rgbs.0.conv.modulation.weight"]
    base = {n: params[n].detach().clone() for n in params}
    g = torch.Generator().manual_seed(0)
    tuned = {n: base[n] + 0.3 * torch.randn(base[n].shape, generator=g) for n in names}
    patch = ErasurePatch.from_diff(
        base,
        tuned,
        {n: None for n in names},
        {"method": "test"},
        fingerprint=erase.core.patch.fingerprint(pipe, names),
    )
    before = pipe(seeds=[0, 1], output_type="pt")
    apply_patch(pipe, patch)
    assert all(torch.allclose(params[n], tuned[n], atol=1e-6) for n in names)
    assert (pipe(seeds=[0, 1], output_type="pt") - before).abs().max() > 1e-2
    remove_patch(pipe)
    assert all(torch.equal(params[n], base[n]) for n in params)
    assert torch.equal(pipe(seeds=[0, 1], output_type="pt"), before)
