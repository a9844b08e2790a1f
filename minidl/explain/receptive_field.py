"""``python -m minidl.explain receptive-field --model resnet18``: how the receptive field
grows, layer by layer, read from ``minidl.summary`` (see its module docstring for the
recurrence and how residual sums and Inception branches are handled).

Each line is one module call whose output has a spatial field, in call order: a
container's line (a residual block: the field of its sum) comes before its layers."""
from __future__ import annotations

from .. import models
from ..summary import summary

__all__ = ["growth", "MODEL_NAMES"]

MODEL_NAMES = ("lenet5", "alexnet", "vgg16", "googlenet", "mobilenet_v1", "mobilenet_v2",
               "resnet18", "resnet34", "resnet50", "resnet50-paper")


def _build(name):
    """A model by name; ``resnet50-paper``: ResNet-50 with the stride in the first 1x1."""
    if name not in MODEL_NAMES:
        raise ValueError(f"receptive-field: unknown model {name!r}; expected one of "
                         f"{', '.join(MODEL_NAMES)}")
    if name == "resnet50-paper":
        return models.resnet50(stride_in_1x1=True)
    if name == "googlenet":
        return models.googlenet(aux_logits=False)
    return getattr(models, name)()


def _pair(p):
    h, w = (f"{v:g}" for v in p)
    return h if h == w else f"{h}x{w}"


def growth(name, input_size=None):
    """The table of the field's growth through model ``name`` (text)."""
    if input_size is None:
        input_size = (1, 32, 32) if name == "lenet5" else (3, 224, 224)
    s = summary(_build(name), input_size, verbose=False)
    header = f"{'layer':<28} {'type':<18} {'output HxW':>10} {'size':>7} {'jump':>5} {'start':>6}"
    lines = [f"{name}: receptive field at input {'x'.join(map(str, input_size))} "
             "(size: input pixels one output sees; jump: input pixels between neighbouring "
             "outputs; start: centre of the first output's field)", header, "-" * len(header)]
    for r in s.rows:
        if r.rf is None:
            continue
        hw = "x".join(str(d) for d in r.output_shape[-2:])
        label = "  " * max(r.depth - 1, 0) + (r.name or r.type)
        lines.append(f"{label:<28} {r.type:<18} {hw:>10} {_pair(r.receptive_field):>7} "
                     f"{_pair(r.rf_jump):>5} {_pair(r.rf_start):>6}")
    field = "-" if s.receptive_field is None else _pair(s.receptive_field)
    lines.append(f"receptive field (the last spatial layer before global pooling): {field}")
    return "\n".join(lines) + "\n"
