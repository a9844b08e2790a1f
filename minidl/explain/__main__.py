"""``python -m minidl.explain``: worked numbers for an op, on the command line.

    python -m minidl.explain conv2d --input 1x2x5x4 --kernel 3x2x3x3 --stride 2 --padding 1
    python -m minidl.explain conv2d --input 1x1x5x5 --kernel 1x1x3x3 --stride 2,1 --padding 1,0
    python -m minidl.explain linear --input 2x3 --weight 4x3
    python -m minidl.explain chain --input 1x1x6x6 --kernel 2x1x3x3 --pool 2
    python -m minidl.explain max_pool2d --input 1x1x4x4 --kernel-size 2 --tie split
    python -m minidl.explain avg_pool2d --input 1x1x5x5 --kernel-size 3 --stride 2 --padding 1
    python -m minidl.explain batch_norm --input 4x3
    python -m minidl.explain softmax_cross_entropy --input 3x4 --target 0,2,1
    python -m minidl.explain receptive-field --model resnet18

Shapes are written with an ``x`` between the sizes (``1x2x5x4`` is N=1, C=2, H=5, W=4);
values are drawn with ``--seed``. ``--out FILE`` writes the result atomically (a temporary
file in the same folder, then ``os.replace``), so a reader never sees half a file.
"""
from __future__ import annotations

import argparse
import sys

from . import (avg_pool2d, batch_norm, chain, conv2d, linear, max_pool2d,
               softmax_cross_entropy)
from ..serialization import atomic_write
from .receptive_field import MODEL_NAMES, growth

SHAPES_HELP = """shapes: sizes joined by 'x', no spaces:
  --input  N x C x H x W   like 1x2x5x4 (conv2d, chain) or N x IN like 2x3 (linear)
  --kernel OC x C/G x KH x KW like 3x2x3x3  (C/G: the input channels of one group)
  --weight OUT x IN        like 4x3 (linear)
  --input  N x C x H x W or C x H x W (max_pool2d, avg_pool2d); N x C or N x C x H x W
           (batch_norm); N x C like 3x4 (softmax_cross_entropy, with --target 0,2,1)
pairs: --stride 2 or --stride 2,1 (height, width); likewise --padding, --dilation, --pool,
  --kernel-size;
  --padding same / valid as in PyTorch ('same': stride 1 only).
values: small integers by default (--values int: x in [-3, 3], w, b, dY in [-2, 2], exact,
  so the arithmetic can be redone by hand), or --values float (normal, 3 decimals).
  max_pool2d draws distinct values in each plane, or (--tie split) values that tie;
  batch_norm and softmax_cross_entropy print 4 decimals (whole numbers as integers).
Every number is checked against minidl's autograd before printing; the output ends with
  'checked against autograd: max |diff| = ...'.
Too large to print (conv: N > 4, C or OC > 6, H or W > 16, KH or KW > 5, OH or OW > 12,
  an im2col matrix over 64 x 64; linear: any size > 12; pooling: N > 4, C > 6, H or W > 16,
  KH or KW > 5, OH or OW > 12, more than 64 windows; batch_norm: C > 6 or more than 24
  values per channel; softmax_cross_entropy: N or C > 12): an error; --summary prints
  the shape of every step instead."""


def shape_arg(expected, example, rank):
    """An argparse type: '1x2x5x4' -> (1, 2, 5, 4), a clear error otherwise."""
    def parse(text):
        parts = text.lower().split("x")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            shape = None
        if shape is None or len(shape) != rank or min(shape) < 1:
            raise argparse.ArgumentTypeError(f"expected {expected} like {example}, got "
                                             f"{text!r}")
        return shape
    return parse


def pair_arg(allow_words=()):
    """An argparse type: '2' -> 2, '2,1' -> (2, 1); words such as 'same' pass through."""
    def parse(text):
        if text in allow_words:
            return text
        try:
            vals = tuple(int(p) for p in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) not in (1, 2):
            words = "".join(f" or '{w}'" for w in allow_words)
            raise argparse.ArgumentTypeError(f"expected an int or a pair like 2,1{words}, got "
                                             f"{text!r}")
        return vals[0] if len(vals) == 1 else vals
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minidl.explain",
        description="Every step of an op's forward and backward pass, in numbers, computed "
                    "with minidl's own kernels and checked against autograd.",
        epilog=SHAPES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="op", required=True, metavar="{" + ",".join(OPS) + "}")

    def common(q, bias=True):
        if bias:
            q.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                           help="add a bias (default: yes; --no-bias for none)")
        q.add_argument("--seed", type=int, default=0, help="seed of the drawn values (0)")
        q.add_argument("--values", choices=("int", "float"), default="int",
                       help="small integers (default) or normal floats")
        q.add_argument("--format", choices=("text", "markdown", "latex", "html"),
                       default="text", help="html: the interactive page (one file)")
        q.add_argument("--step", choices=("forward", "backward", "all"), default="all",
                       help="print only the forward or the backward steps")
        q.add_argument("--summary", action="store_true",
                       help="the shape of every step, no numbers (any size)")
        q.add_argument("--out", metavar="FILE", help="write to FILE (atomically) instead of "
                                                     "printing")

    def conv_args(q):
        q.add_argument("--input", required=True,
                       type=shape_arg("N x C x H x W", "1x2x5x4", 4), help="N x C x H x W")
        q.add_argument("--kernel", required=True,
                       type=shape_arg("OC x C/G x KH x KW", "3x2x3x3", 4),
                       help="OC x C/groups x KH x KW")
        q.add_argument("--stride", type=pair_arg(), default=1, help="S or SH,SW (1)")
        q.add_argument("--padding", type=pair_arg(("same", "valid")), default=0,
                       help="P, PH,PW, same or valid (0)")
        q.add_argument("--dilation", type=pair_arg(), default=1, help="D or DH,DW (1)")
        q.add_argument("--groups", type=int, default=1, help="groups (1)")

    fmt = argparse.RawDescriptionHelpFormatter
    c = sub.add_parser("conv2d", help="a 2-D convolution: im2col, GEMM, col2im, flipped "
                                      "kernel", epilog=SHAPES_HELP, formatter_class=fmt)
    conv_args(c)
    common(c)
    lin = sub.add_parser("linear", help="y = x W^T + b and its gradients", epilog=SHAPES_HELP,
                         formatter_class=fmt)
    lin.add_argument("--input", required=True, type=shape_arg("N x IN", "2x3", 2),
                     help="N x IN")
    lin.add_argument("--weight", required=True, type=shape_arg("OUT x IN", "4x3", 2),
                     help="OUT x IN")
    common(lin)
    ch = sub.add_parser("chain", help="conv2d -> relu -> max_pool2d, the chain rule",
                        epilog=SHAPES_HELP, formatter_class=fmt)
    conv_args(ch)
    ch.add_argument("--pool", type=pair_arg(), default=2, help="pooling window = stride (2)")
    common(ch)
    pool_subcommands(sub, common, fmt)
    return p


OPS = ("conv2d", "linear", "chain", "max_pool2d", "avg_pool2d", "batch_norm",
       "softmax_cross_entropy", "receptive-field")


def int_list(text):
    """An argparse type: '0,2,1' -> [0, 2, 1]."""
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class indices like 0,2,1, got "
                                         f"{text!r}") from None


def any_shape_arg(expected, example, ranks):
    """shape_arg for several allowed ranks."""
    parsers = [shape_arg(expected, example, r) for r in ranks]

    def parse(text):
        for q in parsers:
            try:
                return q(text)
            except argparse.ArgumentTypeError:
                pass
        raise argparse.ArgumentTypeError(f"expected {expected} like {example}, got {text!r}")
    return parse


def pool_subcommands(sub, common, fmt):
    """max_pool2d, avg_pool2d, batch_norm, softmax_cross_entropy."""
    def pool_args(q, dilation):
        q.add_argument("--input", required=True,
                       type=any_shape_arg("N x C x H x W", "1x1x4x4", (4, 3)),
                       help="N x C x H x W (or C x H x W)")
        q.add_argument("--kernel-size", required=True, type=pair_arg(),
                       help="K or KH,KW")
        q.add_argument("--stride", type=pair_arg(), default=None,
                       help="S or SH,SW (default: the kernel size)")
        q.add_argument("--padding", type=pair_arg(), default=0, help="P or PH,PW (0)")
        if dilation:
            q.add_argument("--dilation", type=pair_arg(), default=1, help="D or DH,DW (1)")
        q.add_argument("--ceil-mode", action="store_true", help="round the output size up")

    mp = sub.add_parser("max_pool2d", help="max pooling: each window's maximum, where each "
                        "gradient goes, tie='first' vs 'split'", epilog=SHAPES_HELP,
                        formatter_class=fmt)
    pool_args(mp, dilation=True)
    mp.add_argument("--tie", choices=("first", "split"), default="first",
                    help="equal maxima: all to the first (PyTorch, default) or split evenly")
    common(mp, bias=False)
    ap = sub.add_parser("avg_pool2d", help="average pooling: sums, divisors, dY / d",
                        epilog=SHAPES_HELP, formatter_class=fmt)
    pool_args(ap, dilation=False)
    ap.add_argument("--count-include-pad", action=argparse.BooleanOptionalAction,
                    default=True, help="padding counts in the divisor (default: yes)")
    common(ap, bias=False)
    bn = sub.add_parser("batch_norm", help="batch norm in training mode: the three terms of "
                        "dX", epilog=SHAPES_HELP, formatter_class=fmt)
    bn.add_argument("--input", required=True,
                    type=any_shape_arg("N x C or N x C x H x W", "4x3", (2, 4, 3)),
                    help="N x C or N x C x H x W")
    bn.add_argument("--eps", type=float, default=1e-5, help="added to the variance (1e-05)")
    bn.add_argument("--affine", action=argparse.BooleanOptionalAction, default=True,
                    help="gamma and beta (default: yes; --no-affine for none)")
    common(bn, bias=False)
    ce = sub.add_parser("softmax_cross_entropy", help="softmax + cross-entropy: p - y, label "
                        "smoothing", epilog=SHAPES_HELP, formatter_class=fmt)
    ce.add_argument("--input", required=True, type=shape_arg("N x C", "3x4", 2),
                    help="N x C logits")
    ce.add_argument("--target", type=int_list, default=None,
                    help="class indices like 0,2,1 (default: drawn)")
    ce.add_argument("--label-smoothing", type=float, default=0.0, help="eps in [0, 1] (0)")
    common(ce, bias=False)
    rf = sub.add_parser("receptive-field", help="how a model's receptive field grows, layer "
                        "by layer (size, jump, start), from minidl.summary")
    rf.add_argument("--model", required=True, choices=MODEL_NAMES, help="the model")
    rf.add_argument("--input", type=shape_arg("C x H x W", "3x224x224", 3), default=None,
                    help="C x H x W (default 3x224x224; lenet5: 1x32x32)")


def explain_op(args, kw):
    """The Explanation of the pooling, norm and loss subcommands (None for the others)."""
    if args.op in ("max_pool2d", "avg_pool2d"):
        geo = dict(stride=args.stride, padding=args.padding, ceil_mode=args.ceil_mode)
        if args.op == "max_pool2d":
            return max_pool2d(args.input, args.kernel_size, dilation=args.dilation,
                              tie=args.tie, **geo, **kw)
        return avg_pool2d(args.input, args.kernel_size,
                          count_include_pad=args.count_include_pad, **geo, **kw)
    if args.op == "batch_norm":
        affine = None if args.affine else False
        return batch_norm(args.input, affine, affine, eps=args.eps, **kw)
    if args.op == "softmax_cross_entropy":
        try:
            return softmax_cross_entropy(args.input, args.target,
                                         label_smoothing=args.label_smoothing, **kw)
        except IndexError as e:          # a class out of range: F.cross_entropy's words
            raise ValueError(str(e)) from e
    return None


def explain(args):
    """The Explanation for parsed arguments."""
    kw = dict(values=args.values, seed=args.seed, summary=args.summary)
    other = explain_op(args, kw)
    if other is not None:
        return other
    if args.op == "linear":
        return linear(args.input, args.weight, b=True if args.bias else None, **kw)
    geo = dict(stride=args.stride, padding=args.padding, dilation=args.dilation,
               groups=args.groups)
    b = True if args.bias else None
    if args.op == "chain":
        return chain(args.input, args.kernel, b, pool=args.pool, **geo, **kw)
    return conv2d(args.input, args.kernel, b, **geo, **kw)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.op == "receptive-field":
        sys.stdout.write(growth(args.model, args.input))
        return 0
    try:
        text = explain(args).render(args.format, step=args.step)
    except (ValueError, TypeError, RuntimeError) as e:   # ShapeError is both of the first
        parser.exit(2, f"{parser.prog} {args.op}: error: {e}\n")
    if args.out:
        try:
            with atomic_write(args.out, "w") as f:     # all or nothing, mode per the umask
                f.write(text)
        except OSError as e:
            parser.exit(2, f"{parser.prog} {args.op}: error: cannot write {args.out}: {e}\n")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
