"""``minidl.backends``: the switches PyTorch scripts set on ``torch.backends``, accepted.

Scripts written for PyTorch tune cuDNN and TF32 and ask whether Apple's MPS is there::

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    use_mps = torch.backends.mps.is_available()

minidl uses neither cuDNN nor TF32 nor MPS, so every flag here is stored and ignored,
without a warning (a warning on every run of an unchanged script would teach people to
ignore warnings); ``mps.is_available()`` is False. (Not to be confused with
``minidl.backend``, singular: the module that tells NumPy from CuPy.)
"""
from __future__ import annotations

__all__ = ["cudnn", "cuda", "mps"]


class _Flags:
    """A namespace of settable flags: ``cudnn.benchmark = True`` is stored, nothing more."""

    def __init__(self, name, **flags):
        self.__dict__.update(flags)
        self._name = name

    def __repr__(self):
        flags = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"<minidl.backends.{self._name} ({flags}); ignored by minidl>"


class _CuDNN(_Flags):
    """``torch.backends.cudnn``'s flags (minidl has no cuDNN: they change nothing)."""

    def __init__(self):
        super().__init__("cudnn", enabled=True, benchmark=False, deterministic=False,
                         allow_tf32=True)

    @staticmethod
    def is_available():
        """False: minidl's GPU kernels are its own (CuPy), not cuDNN's."""
        return False

    @staticmethod
    def version():
        return None


class _CUDA(_Flags):
    """``torch.backends.cuda``: ``matmul.allow_tf32`` and friends, stored and ignored."""

    def __init__(self):
        super().__init__("cuda")
        self.matmul = _Flags("cuda.matmul", allow_tf32=False,
                             allow_fp16_reduced_precision_reduction=True,
                             allow_bf16_reduced_precision_reduction=True)

    @staticmethod
    def is_built():
        """Whether this minidl can run on CUDA GPUs: always, given CuPy (see ``minidl.cuda``)."""
        return True


class _MPS(_Flags):
    """``torch.backends.mps``: Apple's GPUs, which minidl does not support."""

    def __init__(self):
        super().__init__("mps")

    @staticmethod
    def is_available():
        return False

    @staticmethod
    def is_built():
        return False


cudnn = _CuDNN()
cuda = _CUDA()
mps = _MPS()
