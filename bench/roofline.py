"""Roofline figures for the CPU benches: this machine's measured single-core fp32 GEMM peak, and how close a
mode's useful FLOPs per second come to the peak of the cores it used.

``gemm_peak()`` times one large fp32 matrix product (1024 x 1280 @ 1280 x 5120, the shape of a transformer FFN)
on one thread with every kernel available in this process -- torch's ``addmm`` (MKL), oneDNN's inner product with
a prepacked weight, onnxruntime's MatMul when installed -- and keeps the fastest: no fp32 code on this core beats
it by much, so ``FLOPs / (peak x cores)`` bounds any mode's speed and shows how far a target is from possible.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np
import torch

SHAPE = (1024, 1280, 5120)


def _best_rate(fn: Callable[[], object], flops: float, min_seconds: float = 0.4) -> float:
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return flops / best / 1e9


def _ort_matmul(a: np.ndarray, b: np.ndarray) -> Callable[[], object]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a.shape[0], b.shape[1]])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(model)
    return lambda: sess.run(None, {"a": a})


def gemm_peak() -> Dict[str, object]:
    """{"gflops": best single-thread rate, "kernel": its name, "all": {kernel: rate}} (fp32, one core)."""
    m, k, n = SHAPE
    flops = 2.0 * m * k * n
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x, w, bias = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        rates = {"torch addmm (MKL)": _best_rate(lambda: torch.addmm(bias, x, w.t()), flops)}
        if torch.backends.mkldnn.is_available():
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            rates["oneDNN prepacked"] = _best_rate(
                lambda: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), flops)
        try:
            rates["onnxruntime MatMul"] = _best_rate(_ort_matmul(x.numpy(), w.t().contiguous().numpy()), flops)
        except ImportError:
            pass
    finally:
        torch.set_num_threads(threads)
    kernel = max(rates, key=rates.get)
    return {"gflops": rates[kernel], "kernel": kernel, "all": rates}


def print_peak(peak: Dict[str, object]) -> None:
    others = ", ".join(f"{k} {v:.0f}" for k, v in peak["all"].items())
    print(f"roofline: single-core fp32 GEMM peak {peak['gflops']:.0f} GFLOP/s ({peak['kernel']}; measured "
          f"{SHAPE[0]}x{SHAPE[1]} @ {SHAPE[1]}x{SHAPE[2]}, 1 thread: {others})", flush=True)


def fraction(flops: float, seconds: float, peak_gflops: float, cores: int) -> str:
    """'X GFLOP/s = Y% of N cores' peak' for ``flops`` useful FLOPs done in ``seconds`` on ``cores`` cores."""
    rate = flops / seconds / 1e9
    return f"{rate:6.1f} GFLOP/s = {100 * rate / (peak_gflops * cores):5.1f}% of {cores} cores' peak"
