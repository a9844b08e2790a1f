"""Reference solutions of the four exercises in ``exercises/`` (and softmax-CE's backward).

They live here, in the tests, not beside the stubs: a learner opening ``exercises/`` sees the
task, not the answer. ``tests/test_check_backward.py`` checks them through the same command
the exercises' README gives::

    python -m minidl.explain.check tests/exercise_solutions.py

and plants each known mistake in a copy of them (``mistake=...``) to see the checker name it.

Shape letters: N batch, C input channels, OC output channels, H/W input size, KH/KW kernel
size, SH/SW strides, PH/PW padding, OH/OW output size, D features, K classes.
"""
import numpy as np


def pair(v):
    """3 -> (3, 3); (2, 1) -> (2, 1)."""
    return (v, v) if np.isscalar(v) else tuple(v)


# ----------------------------------------------------------------------------- conv forward


def conv_forward(x, w, b, stride, padding, mistake=None):
    """out (N, OC, OH, OW) = b[oc] + sum over c, kh, kw of
    w[oc, c, kh, kw] * x_padded[n, c, oh*SH + kh, ow*SW + kw].

    One strided slice of the padded input per kernel offset (kh, kw): the slice holds, for
    every output position, the input value that this tap of the kernel multiplies.
    """
    (SH, SW), (PH, PW) = pair(stride), pair(padding)
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    if mistake == "kernel_flipped":
        w = w[:, :, ::-1, ::-1]
    OH = (H + 2 * PH - KH) // SH + 1
    OW = (W + 2 * PW - KW) // SW + 1
    xp = np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))          # (N, C, H+2PH, W+2PW)
    out = np.zeros((N, OC, OH, OW))
    for kh in range(KH):
        for kw in range(KW):
            patch = xp[:, :, kh:kh + SH * (OH - 1) + 1:SH,
                       kw:kw + SW * (OW - 1) + 1:SW]                 # (N, C, OH, OW)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, kh, kw])
    if mistake != "bias_missing":
        out += b[None, :, None, None]
    return out


# ----------------------------------------------------------------------------- conv backward


def conv_backward(dout, x, w, b, stride, padding, mistake=None):
    """(dx (N, C, H, W), dw (OC, C, KH, KW), db (OC,)) of conv_forward, given dout
    (N, OC, OH, OW).

    Per kernel offset (kh, kw), the same strided slice as in the forward pass:
        dw[:, :, kh, kw]  = sum over n, oh, ow of dout * slice      (a gather)
        dx_padded[slice] += sum over oc of dout * w[:, :, kh, kw]   (a scatter)
    then the padding is cropped off dx_padded. ``mistake`` plants a known error.
    """
    (SH, SW), (PH, PW) = pair(stride), pair(padding)
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    if mistake == "stride_ignored":
        SH = SW = 1
    xp = np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    first_only = mistake == "dw_first_image"
    for kh in range(KH):
        for kw in range(KW):
            rows = slice(kh, kh + SH * (OH - 1) + 1, SH)
            cols = slice(kw, kw + SW * (OW - 1) + 1, SW)
            patch = xp[:, :, rows, cols]                              # (N, C, OH, OW)
            if first_only:
                dw[:, :, kh, kw] = np.einsum("ohw,chw->oc", dout[0], patch[0])
            else:
                dw[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dout, patch)
            dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", dout, w[:, :, kh, kw])
    if mistake == "dw_mean":
        dw /= N
    if mistake == "dw_last_image":   # a per-image loop that assigns instead of adding
        for n in range(N):
            dw = conv_backward(dout[n:n + 1], x[n:n + 1], w, b, stride, padding)[1]
    dx = dxp[:, :, PH:PH + H, PW:PW + W]
    if mistake == "padding_not_cropped":
        dx = dxp
    elif mistake == "padding_crop_offset":
        dx = dxp[:, :, :H, :W]
    elif mistake in ("kernel_not_flipped", "flipped_twice"):
        dx = conv_dx_as_convolution(dout, x.shape, w, stride, padding, flip=False)
    elif mistake == "border_clip":
        dx = conv_dx_clipped_windows(dout, x.shape, w, stride, padding)
    db = dout.sum(axis=(0, 2, 3))
    if mistake == "bias_wrong_axes":
        db = dout.sum(axis=(2, 3))          # (N, OC): forgot the batch axis
    elif mistake == "bias_mean":
        db = dout.mean(axis=(0, 2, 3))
    return dx, dw, db


def conv_dx_as_convolution(dout, x_shape, w, stride, padding, flip=True):
    """dx as a 'full' cross-correlation of the stride-dilated dout with the kernel rotated
    by 180 degrees (``flip=False`` plants the classic mistake)."""
    (SH, SW), (PH, PW) = pair(stride), pair(padding)
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    dil = np.zeros((N, OC, SH * (OH - 1) + 1, SW * (OW - 1) + 1))
    dil[:, :, ::SH, ::SW] = dout
    padded = np.pad(dil, ((0, 0), (0, 0), (KH - 1, KH - 1), (KW - 1, KW - 1)))
    k = w[:, :, ::-1, ::-1] if flip else w
    FH, FW = padded.shape[2] - KH + 1, padded.shape[3] - KW + 1   # the covered rows/cols
    full = np.zeros((N, C, FH, FW))
    for kh in range(KH):
        for kw in range(KW):
            full += np.einsum("nohw,oc->nchw", padded[:, :, kh:kh + FH, kw:kw + FW],
                              k[:, :, kh, kw])
    dxp = np.zeros((N, C, H + 2 * PH, W + 2 * PW))
    dxp[:, :, :FH, :FW] = full
    return dxp[:, :, PH:PH + H, PW:PW + W]


def conv_dx_clipped_windows(dout, x_shape, w, stride, padding):
    """A per-window scatter straight into dx that clips each window to the image but then
    takes the kernel from its corner (0, 0): wrong only for windows hanging over the top
    or left padding (the right slice is w[:, :, hs - h0:he - h0, ws - w0:we - w0])."""
    (SH, SW), (PH, PW) = pair(stride), pair(padding)
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    dx = np.zeros(x_shape)
    for oh in range(dout.shape[2]):
        for ow in range(dout.shape[3]):
            h0, w0 = oh * SH - PH, ow * SW - PW
            hs, he, ws, we = max(h0, 0), min(h0 + KH, H), max(w0, 0), min(w0 + KW, W)
            dx[:, :, hs:he, ws:we] += np.einsum("no,ochw->nchw", dout[:, :, oh, ow],
                                                w[:, :, :he - hs, :we - ws])
    return dx


# ----------------------------------------------------------------------------- max pooling


def max_pool_backward(dout, x, kernel_size, stride, mistake=None):
    """dx (N, C, H, W): each window's gradient dout[n, c, oh, ow] goes to the position of
    the window's maximum; overlapping windows add up."""
    (KH, KW), (SH, SW) = pair(kernel_size), pair(stride)
    N, C, H, W = x.shape
    _, _, OH, OW = dout.shape
    if mistake == "stride_ignored":
        SH = SW = 1
    dx = np.zeros_like(x)
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * SH, ow * SW
            win = x[:, :, h0:h0 + KH, w0:w0 + KW]                       # (N, C, KH, KW)
            mask = win == win.max(axis=(2, 3), keepdims=True)
            if mistake == "every_element":
                mask = np.ones_like(win)
            elif mistake == "split_evenly":
                mask = np.ones_like(win) / (KH * KW)
            g = dout[:, :, oh, ow, None, None]
            if mistake == "mask_without_dout":
                g = 1.0
            if mistake == "overwrite":
                dx[:, :, h0:h0 + KH, w0:w0 + KW] = mask * g
            else:
                dx[:, :, h0:h0 + KH, w0:w0 + KW] += mask * g
    return dx


# ----------------------------------------------------------------------------- batch norm


def batchnorm_backward(dout, x, gamma, beta, eps, mistake=None):
    """(dx, dgamma (D,), dbeta (D,)) of y = gamma * xhat + beta, training mode,
    xhat = (x - mean) / sqrt(var + eps), for x (N, D) (statistics over the batch axis) or
    x (N, C, H, W) with D = C (statistics over N, H and W, per channel).

    With g = dout * gamma: dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps).
    """
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)       # gamma broadcast over x
    mu = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mu) / std
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    g = dout * gamma.reshape(shape)
    if mistake == "missing_mean_terms":
        dx = g / std
    else:
        dx = (g - g.mean(axis=axes, keepdims=True)
              - xhat * (g * xhat).mean(axis=axes, keepdims=True)) / std
    if mistake == "dgamma_not_summed":
        dgamma = dout * xhat
    elif mistake == "swapped":
        dgamma, dbeta = dbeta, dgamma
    return dx, dgamma, dbeta


def spatial_batchnorm_backward(dout, x, gamma, beta, eps, mistake=None):
    """The same, for images: x (N, C, H, W) (checked with op="batch_norm2d")."""
    return batchnorm_backward(dout, x, gamma, beta, eps, mistake)


# ----------------------------------------------------------------------------- softmax-CE


def softmax_cross_entropy_backward(logits, targets, mistake=None):
    """dlogits (N, K) of the mean over the batch of -log softmax(logits)[n, targets[n]]:
    (softmax(logits) - onehot(targets)) / N."""
    N = logits.shape[0]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    d = z / z.sum(axis=1, keepdims=True)
    d[np.arange(N), targets] -= 1.0
    if mistake == "not_divided":
        return d
    if mistake == "sign_flipped":
        return -d / N
    return d / N
