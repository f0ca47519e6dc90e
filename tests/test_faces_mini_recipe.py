"""The faces-mini recipe's StyleGAN configs: the discriminator may have its own widths."""

from worlds.faces_mini.gan_training import gan_config
from worlds.faces_mini.train import Recipe


def test_the_discriminator_takes_its_own_widths_or_the_generators():
    same = Recipe(gan_d_channels=None)
    assert gan_config(same, "discriminator").channels == gan_config(same).channels
    own = Recipe(gan_d_channels={"4": 64, "8": 32, "16": 16, "32": 8})
    assert gan_config(own, "discriminator").channels == {4: 64, 8: 32, 16: 16, 32: 8}
    assert gan_config(own).channels == {int(k): v for k, v in own.gan["channels"].items()}


def test_recipe_overrides_reach_inside_and_refuse_what_does_not_exist():
    import pytest

    from worlds.staged_build import set_recipe_fields

    r = Recipe()
    set_recipe_fields(r, ["gan.n_mlp=6", "gan_lr=0.002", "classifier.p_blur=0.2", "r1_gamma=1", "gan_d_channels=null"])
    assert (r.gan["n_mlp"], r.gan_lr, r.classifier.p_blur, r.r1_gamma, r.gan_d_channels) == (6, 0.002, 0.2, 1, None)
    assert Recipe().gan["n_mlp"] == 8  # the default is untouched
    for bad, message in [
        ("gan.depth=3", "unknown key 'depth'; choose one of: resolution"),
        ("lr=1", "unknown key 'lr'"),
        ("gan_iterations=many", "expected a int like 40000"),
        ("nope", "is not KEY=VALUE"),
        ("missing.x=1", "has no 'missing'"),
    ]:
        with pytest.raises(ValueError, match=message):
            set_recipe_fields(Recipe(), [bad])


def test_a_trainer_refuses_a_bad_override_in_one_line(capsys):
    import pytest

    from worlds.faces_mini.train import main

    with pytest.raises(SystemExit) as e:
        main(["--set", "gan.depth=3", "--stages", "check", "--out", "/nonexistent/x"])
    assert e.value.code == 2 and "unknown key 'depth'" in capsys.readouterr().err
