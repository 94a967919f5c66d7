"""Differentiable ops, each a pair ``name_forward(...) -> (out, cache)`` / ``name_backward(dout, cache)``.

Backwards return gradients in argument order (one array, or a tuple whose i-th entry is the
gradient of the i-th argument). Every pair is gradient-checked in float64 in ``tests/``.
"""
