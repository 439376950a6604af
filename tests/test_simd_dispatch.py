"""Runtime SIMD dispatch (csrc/cpu/dispatch.h): every compiled level this CPU supports gives the
same kNN indices and the same losses to rounding; a bad FMKIT_SIMD fails the import clearly.

Each level runs in its own subprocess, because the level is chosen once, at import.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

_C = pytest.importorskip("fmkit._C")

ORDER = ["scalar", "sse2", "neon", "avx2", "avx512"]

# Prints, as JSON, what the selected level computes on fixed inputs.
PROBE = r"""
import json, torch, fmkit
from fmkit import _C
g = torch.Generator().manual_seed(0)
out = {"selected": _C.simd_selected, "info": fmkit.info()["simd_selected"]}
x = torch.randn(300, 37, generator=g)
y = torch.randn(1000, 37, generator=g)
y[500] = y[7]  # an exact duplicate: the tie must go to the lower index at every level
out["knn_l2"] = fmkit.ops.knn(x, y, 10, backend="cpu")[1].tolist()
out["knn_ip"] = fmkit.ops.knn(x, y, 5, metric="ip", backend="cpu")[1].tolist()
out["knn_1"] = fmkit.ops.knn(x.half(), y.half(), 1, backend="cpu")[1].tolist()
a = torch.nn.functional.normalize(torch.randn(257, 64, generator=g), dim=1).requires_grad_()
b = torch.nn.functional.normalize(torch.randn(257, 64, generator=g), dim=1)
s = torch.tensor(14.0)
for kind in ("softmax", "sigmoid"):
    bias = torch.tensor(-10.0) if kind == "sigmoid" else None
    loss = fmkit.ops.clip_loss(a, b, s, logit_bias=bias, kind=kind, backend="cpu")
    (grad,) = torch.autograd.grad(loss, a)
    out["clip_" + kind] = [loss.item(), grad.abs().sum().item()]
print("PROBE" + json.dumps(out))
"""


def _run(code, **env):
    full = dict(os.environ)
    full.pop("FMKIT_SIMD", None)
    full.pop("FMKIT_SIMD_CPU", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def _supported():
    return [lv for lv in _C.simd_compiled if ORDER.index(lv) <= ORDER.index(_C.simd_detected)]


def test_default_is_the_best_supported_level():
    if "FMKIT_SIMD" in os.environ:
        pytest.skip("FMKIT_SIMD is set for this run")
    assert _C.simd_selected == _supported()[-1]
    import fmkit

    info = fmkit.info()
    assert info["simd_selected"] == _C.simd_selected
    assert info["simd_detected"] == _C.simd_detected
    assert info["simd_compiled"] == list(_C.simd_compiled)


@pytest.mark.slow
def test_every_level_gives_the_same_results():
    results = {}
    for level in _supported():
        r = _run(PROBE, FMKIT_SIMD=level)
        assert r.returncode == 0, f"FMKIT_SIMD={level}:\n{r.stderr[-3000:]}"
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE")][-1]
        results[level] = json.loads(line[len("PROBE"):])
        assert results[level]["selected"] == level
        assert results[level]["info"] == level
    assert len(results) >= 2, "needs at least two SIMD levels on this CPU"
    base_level = next(iter(results))
    base = results[base_level]
    for level, got in results.items():
        for key in ("knn_l2", "knn_ip", "knn_1"):  # exact search: identical at every level
            assert got[key] == base[key], f"{key}: {level} differs from {base_level}"
        for kind in ("softmax", "sigmoid"):  # fp32 sums in a different order: rounding only
            assert got["clip_" + kind] == pytest.approx(base["clip_" + kind], rel=2e-5), (level, kind)


@pytest.mark.slow  # a fresh interpreter importing torch per case (3 s each)
@pytest.mark.parametrize("value, message", [
    ("bogus", r"FMKIT_SIMD=bogus: unknown SIMD level \(compiled levels: .*this CPU supports up to"),
    ("AVX2", r"FMKIT_SIMD=AVX2: unknown SIMD level"),
])
def test_unknown_level_fails_the_import(value, message):
    # `import fmkit` is lazy; the extension (and the level) load with fmkit.ops
    r = _run("import fmkit.ops", FMKIT_SIMD=value)
    assert r.returncode != 0
    assert re.search(message, r.stderr), r.stderr[-2000:]


@pytest.mark.slow  # a fresh interpreter importing torch (3 s); CI runs it per SIMD level
def test_level_above_the_cpu_fails_the_import():
    # FMKIT_SIMD_CPU makes this CPU look like one without AVX-512 (it can only lower the level).
    if _C.simd_detected not in ("avx2", "avx512"):
        pytest.skip("needs an AVX2 CPU to pretend to be an SSE2 one")
    cap = "avx2" if _C.simd_detected == "avx512" else "sse2"
    if cap not in _C.simd_compiled:
        pytest.skip(f"a native build (FMKIT_NATIVE=ON) has no {cap} level to fall back to")
    want = ORDER[ORDER.index(cap) + 1]
    r = _run("import fmkit.ops", FMKIT_SIMD=want, FMKIT_SIMD_CPU=cap)
    assert r.returncode != 0
    assert re.search(rf"FMKIT_SIMD={want}: this CPU does not support {want} .*supports up to {cap}", r.stderr), r.stderr[-2000:]
    # and without the override that CPU gets its own best level
    r = _run("from fmkit import _C; print(_C.simd_selected)", FMKIT_SIMD_CPU=cap)
    assert r.returncode == 0 and r.stdout.split()[-1] == cap, r.stderr[-2000:]


@pytest.mark.slow  # a fresh interpreter importing torch (3 s); CI runs it per SIMD level
def test_level_not_compiled_fails_the_import():
    missing = [lv for lv in ORDER if lv not in _C.simd_compiled and ORDER.index(lv) <= ORDER.index(_C.simd_detected)]
    if not missing:
        pytest.skip("every level up to this CPU's is compiled")
    r = _run("import fmkit.ops", FMKIT_SIMD=missing[0])
    assert r.returncode != 0
    assert f"FMKIT_SIMD={missing[0]}: level not compiled" in r.stderr, r.stderr[-2000:]


def test_exported_functions_are_baseline_code():
    """A function the levels share (an inline function or template emitted out of line) must not
    be the AVX-512 or AVX2 copy, or lower levels would fault on CPUs without those. The build
    makes each level's copies local; this checks the exported functions of the built library."""
    objdump = shutil.which("objdump")
    if objdump is None or sys.platform != "linux" or not any(lv in _C.simd_compiled for lv in ("avx2", "avx512")):
        pytest.skip("needs objdump and an x86-64 multi-level build")
    so = _C.__file__
    syms = subprocess.run([objdump, "-T", "-C", so], capture_output=True, text=True, check=True).stdout
    funcs = []
    for line in syms.splitlines():
        parts = line.split()
        # address flags... section size [version] name
        if ".text" in parts and "DF" in line:
            i = parts.index(".text")
            funcs.append((int(parts[0], 16), int(parts[i + 1], 16), " ".join(parts[i + 2:])))
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True).stdout
    wide = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s.*%[yz]mm", dis, re.M)]
    bad = sorted({name for addr in wide for start, size, name in funcs
                  if start <= addr < start + size and "cpu_avx" not in name})
    assert not bad, f"exported functions with AVX code outside fmkit::cpu_avx*: {bad[:10]}"
