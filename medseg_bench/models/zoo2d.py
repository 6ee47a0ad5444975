"""2D architectures: segmentation-models-pytorch with an `--encoder` axis, and torchvision's FCN.

Pretrained encoder weights are optional: with `pretrained=True` the weights must already be on this machine
(Hugging Face cache for smp encoders, torch hub cache for FCN backbones); nothing is downloaded, and a missing
file is one clear error naming the encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from medseg_bench.errors import UsageError
from medseg_bench.models import DEFAULT_ENCODER, ModelInputs, arch

if TYPE_CHECKING:
    from torch import nn


class Smp(NamedTuple):
    """A segmentation-models-pytorch architecture: adding one is one entry of `SMP`.

    smp models downsample five times (output stride 32), so `min_size` is at least 32; PAN's feature pyramid
    attention also pools its 1/32 map with 7x7, 5x5 and 3x3 kernels, so it needs 128 pixels per side. Their
    deepest BatchNorm is on the 1/32 map (`norm_stride` 32: a batch of 1 at a 32x32 patch fails in training;
    smp's PSPNet stops its encoder at 1/8 and leaves its 1x1 pyramid level unnormalised: None, never);
    `pooled_norm`: it also batch-normalises globally pooled features (ASPP's image pooling, PAN's and
    UPerNet's 1x1 pyramid level), so a batch of 1 fails at any patch. `encoders`: the only encoders it
    takes, the first its default (None: any smp encoder, `DEFAULT_ENCODER` by default); `divisor`: what
    each patch side must be a multiple of; `options`: further constructor arguments, as (name, value) pairs.
    A network that needs more than this gets its own `@arch` builder, as FCN below.
    """

    smp_class: str
    description: str
    aliases: tuple[str, ...] = ()
    min_size: int = 32
    norm_stride: int | None = 32
    pooled_norm: bool = False
    encoders: tuple[str, ...] | None = None
    divisor: int = 32
    options: tuple[tuple[str, object], ...] = ()


SMP = {  # registry name: its smp class and properties
    "unet": Smp("Unet", "U-Net (Ronneberger 2015); 2D: smp.Unet; 3D: MONAI residual UNet"),
    "unetplusplus": Smp("UnetPlusPlus", "UNet++ (Zhou 2018), nested dense skip pathways, smp"),
    "deeplabv3": Smp("DeepLabV3", "DeepLabV3 (Chen 2017), atrous spatial pyramid pooling, smp",
                     pooled_norm=True),
    "deeplab": Smp("DeepLabV3Plus", "DeepLabV3+ (Chen 2018), ASPP plus a decoder, smp.DeepLabV3Plus",
                   ("deeplabv3plus",), pooled_norm=True),
    "fpn": Smp("FPN", "Feature Pyramid Network (Lin 2017) as a segmentation head, smp"),
    "pspnet": Smp("PSPNet", "Pyramid Scene Parsing Network (Zhao 2017), smp", norm_stride=None),
    "linknet": Smp("Linknet", "LinkNet (Chaurasia 2017), additive skip connections, smp"),
    "manet": Smp("MAnet", "Multi-scale Attention Net (Fan 2020), smp"),
    "pan": Smp("PAN", "Pyramid Attention Network (Li 2018), smp", min_size=128, pooled_norm=True),
    "upernet": Smp("UPerNet", "Unified Perceptual Parsing (Xiao 2018), smp", pooled_norm=True),
    "segformer": Smp("Segformer", "SegFormer (Xie 2021) all-MLP decoder, smp, over the chosen encoder"),
}


def check_smp_encoder(encoder: str) -> None:
    """UsageError, with close names, when smp has no encoder `encoder` (`tu-NAME`: any timm model)."""
    import difflib

    from segmentation_models_pytorch.encoders import get_encoder_names

    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
        known = [f"tu-{name}" for name in timm.list_models()]
    else:
        known = list(get_encoder_names())
        if encoder in known:
            return
    close = difflib.get_close_matches(encoder, known, n=3)
    hint = f"did you mean {' or '.join(repr(n) for n in close)}?" if close else \
        "see `medseg-bench list encoders`"
    raise UsageError(f"unknown smp encoder '{encoder}'; {hint}")


def _not_offline(encoder: str) -> UsageError:
    return UsageError(f"pretrained weights for encoder '{encoder}' are not available offline and cannot be "
                      "downloaded here; drop --pretrained or put them in the Hugging Face / torch hub "
                      "cache first")


def _smp_pretrained(cls, inputs: ModelInputs, encoder: str, options: dict[str, object]) -> nn.Module:
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from segmentation_models_pytorch.encoders import encoders

    if encoder not in encoders or "imagenet" not in encoders[encoder]["pretrained_settings"]:
        raise UsageError(f"pretrained weights for encoder '{encoder}': only smp encoders with ImageNet "
                         "weights are supported with --pretrained")
    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    try:
        path = hf_hub_download(settings["repo_id"], filename="model.safetensors",
                               revision=settings["revision"], local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means: not on this machine
        raise _not_offline(encoder) from None
    # Load into a 3-channel encoder, then let smp adapt the first convolution, as it does after a download.
    net = cls(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=inputs.num_classes,
              **options)
    net.encoder.load_state_dict(load_file(path, device="cpu"))
    net.encoder.set_in_channels(inputs.in_channels, pretrained=True)
    return net


def _smp(entry: Smp):
    def build(inputs: ModelInputs) -> nn.Module:
        import segmentation_models_pytorch as smp

        cls = getattr(smp, entry.smp_class)
        encoder = inputs.encoder or (entry.encoders[0] if entry.encoders else DEFAULT_ENCODER)
        if inputs.pretrained:
            return _smp_pretrained(cls, inputs, encoder, dict(entry.options))
        try:
            return cls(encoder_name=encoder, encoder_weights=None, in_channels=inputs.in_channels,
                       classes=inputs.num_classes, **dict(entry.options))
        except KeyError as exc:
            raise UsageError(f"unknown smp encoder '{encoder}' ({str(exc)[:120]}...)") from None

    return build


for _name, _entry in SMP.items():
    arch(_name, "2d", _entry.description, _entry.aliases, divisor=_entry.divisor, min_size=_entry.min_size,
         encoders=_entry.encoders, norm_stride=_entry.norm_stride,
         pooled_norm=_entry.pooled_norm)(_smp(_entry))


@arch("fcn", "2d", "Fully convolutional network (Long 2015), torchvision FCN over a dilated ResNet backbone",
      divisor=8, min_size=32, encoders=("resnet50", "resnet101"))
def _fcn(inputs: ModelInputs) -> nn.Module:
    import torch
    from torch import nn
    from torchvision.models import ResNet50_Weights, ResNet101_Weights
    from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101

    encoder = inputs.encoder or "resnet50"
    factory, weights = {"resnet50": (fcn_resnet50, ResNet50_Weights.IMAGENET1K_V1),
                        "resnet101": (fcn_resnet101, ResNet101_Weights.IMAGENET1K_V1)}[encoder]
    net = factory(weights=None, weights_backbone=None, num_classes=inputs.num_classes, aux_loss=False)
    if inputs.pretrained:
        from pathlib import Path

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise _not_offline(encoder)
        net.backbone.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True), strict=False)
    old = net.backbone.conv1
    if inputs.in_channels != old.in_channels:
        conv = nn.Conv2d(inputs.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                         bias=False)
        if inputs.pretrained:  # as smp does: reuse the RGB filters, averaged and repeated over the channels
            with torch.no_grad():
                conv.weight.copy_(old.weight.mean(1, keepdim=True).repeat(1, inputs.in_channels, 1, 1))
        net.backbone.conv1 = conv

    class OutOnly(nn.Module):
        """torchvision segmentation models return {"out": logits}; the pipeline wants the tensor."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["out"]

    return OutOnly(net)
