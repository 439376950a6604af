"""The card's two ceilings, measured now: device-to-device copy bandwidth and GEMM rate per dtype.

Benchmarks report "% of peak" against these numbers rather than datasheet values
(benchmarks/gpu_check.sh prints them into the summary). Random inputs, never zeros: zeros
run faster than real data on Hopper.
"""
import torch


def _median_ms(fn, repeats=10):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def copy_bandwidth_gbs(n_bytes=2 << 30):
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    return 2 * n_bytes / (ms * 1e-3) / 1e9  # bytes read + bytes written


def gemm_tflops(dtype, tf32=False, n=8192):
    a = torch.randn(n, n, device="cuda").to(dtype)
    b = torch.randn(n, n, device="cuda").to(dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        ms = _median_ms(lambda: a @ b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n**3 / (ms * 1e-3) / 1e12


if __name__ == "__main__":
    props = torch.cuda.get_device_properties(0)
    print(f"ceilings on {props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB):")
    print(f"  device-to-device copy: {copy_bandwidth_gbs():.0f} GB/s (read + write)")
    print(f"  GEMM fp32 (TF32 off): {gemm_tflops(torch.float32):.1f} TFLOP/s")
    print(f"  GEMM tf32:            {gemm_tflops(torch.float32, tf32=True):.1f} TFLOP/s")
    print(f"  GEMM bf16:            {gemm_tflops(torch.bfloat16):.1f} TFLOP/s")
    print(f"  GEMM fp64:            {gemm_tflops(torch.float64, n=4096):.1f} TFLOP/s")
