"""The faces-mini recipe's StyleGAN configs: the discriminator may have its own widths."""

from eval.faces_mini.gan_training import gan_config
from eval.faces_mini.train import Recipe


def test_the_discriminator_takes_its_own_widths_or_the_generators():
    same = Recipe(gan_d_channels=None)
    assert gan_config(same, "discriminator").channels == gan_config(same).channels
    own = Recipe(gan_d_channels={"4": 64, "8": 32, "16": 16, "32": 8})
    assert gan_config(own, "discriminator").channels == {4: 64, 8: 32, 16: 16, 32: 8}
    assert gan_config(own).channels == {int(k): v for k, v in own.gan["channels"].items()}
