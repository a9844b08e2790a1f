"""Exercise 4: the backward pass of batch normalisation (training mode), in NumPy.

Check your answer from the repository root:

    python -m minidl.explain.check exercises/batchnorm_backward.py

The checker runs ``batchnorm_backward`` on three batches (different sizes, means, scales
and eps) and compares dx, dgamma and dbeta with minidl's autograd (``F.batch_norm`` with
``training=True``).

The task
--------
For a batch x of N rows and D features, each feature is normalised with the statistics of
the batch, then scaled and shifted:

    mean  = x.mean(axis=0)                         (D,)
    var   = x.var(axis=0)                          (D,)  divided by N, not N - 1
    xhat  = (x - mean) / sqrt(var + eps)           (N, D)
    out   = gamma * xhat + beta                    (N, D)

Write ``batchnorm_backward(dout, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``:

    dout    (N, D)    d(loss)/d(out), given
    x       (N, D)    the forward pass's input
    gamma   (D,)      the scale
    beta    (D,)      the shift
    eps     float     added to the variance
    dx      (N, D)
    dgamma  (D,)
    dbeta   (D,)

Hints
-----
- Recompute the forward quantities (mean, var, xhat) first.
- dgamma and dbeta are the easy two: each feature's gamma and beta touch all N rows.
- The hard one is dx. ``mean`` and ``var`` are functions of EVERY row of x, so a change in
  one x[i] moves every xhat[j]. Draw the graph x -> mean -> var -> xhat, go backwards one
  node at a time, and add up the paths that reach x.
- Once it works, simplify: dx fits on one line with two means over the batch axis.
"""
import numpy as np


def batchnorm_backward(dout, x, gamma, beta, eps):
    """(dx (N, D), dgamma (D,), dbeta (D,)) of training-mode batch normalisation of x (N, D),
    given dout (N, D)."""
    # TODO: your code here.
    raise NotImplementedError("batchnorm_backward: write it, then run "
                              "python -m minidl.explain.check exercises/batchnorm_backward.py")
