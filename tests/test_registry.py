import pytest

from medseg_bench.errors import UnknownNameError
from medseg_bench.registry import Registry


def test_register_get_alias_and_order() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("beta", 2)
    reg.add("alpha", 1, aliases=("a",))
    assert reg.get("a") == 1 and reg.canonical("a") == "alpha"
    assert list(reg) == ["alpha", "beta"]
    assert reg.aliases_of("alpha") == ["a"]
    assert "a" in reg and "gamma" not in reg


def test_did_you_mean() -> None:
    reg: Registry[int] = Registry("arch")
    reg.add("unet", 1)
    reg.add("deeplab", 2)
    with pytest.raises(UnknownNameError, match=r"unknown arch 'unte'; did you mean 'unet'\?"):
        reg.get("unte")
    with pytest.raises(UnknownNameError, match="choose from deeplab, unet"):
        reg.get("zzzzzz")


def test_a_unique_prefix_is_the_suggestion() -> None:
    reg: Registry[int] = Registry("task")
    for name in ("Task01_BrainTumour", "Task04_Hippocampus", "Task06_Lung"):
        reg.add(name, 1)
    for prefix, meant in (("Task04", "Task04_Hippocampus"), ("task01", "Task01_BrainTumour")):
        with pytest.raises(UnknownNameError, match=rf"unknown task '{prefix}'; did you mean '{meant}'\?"):
            reg.get(prefix)


def test_the_name_in_other_case_is_the_suggestion() -> None:
    from medseg_bench.models import ARCHS

    with pytest.raises(UnknownNameError, match=r"unknown arch 'UNet'; did you mean 'unet'\?"):  # was 'vnet'
        ARCHS.get("UNet")
    with pytest.raises(UnknownNameError, match=r"did you mean 'deeplabv3plus'\?"):
        ARCHS.get("DeepLabV3Plus")


def test_duplicate_is_an_error() -> None:
    reg: Registry[int] = Registry("loss")
    reg.add("dice", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("dice", 2)
