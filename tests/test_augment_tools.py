"""The augment benchmark cases and the demo, on tiny sizes (the real runs are `fmkit bench --op augment`
and `fmkit demo augment`)."""
import os

import pytest
import torch

from fmkit.bench import augment as bench_augment


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_bench_cases_run_and_are_exact(dtype):
    (case,) = bench_augment.cases(torch.device("cpu"), quick=True, shapes=[(3, 7, 9, dtype)])
    names = [name for name, _, _ in case["contenders"]]
    assert names[0].startswith("fmkit stain_jitter") and "release code path, per-image loop" in names
    assert case["exact"][names[0]] and case["exact"]["release code path, per-image loop"]
    for name, fn, _ in case["contenders"]:
        if not hasattr(fn, "unavailable") and "albumentations" not in name:  # its import takes seconds
            fn()


@pytest.mark.slow
def test_demo_runs_and_writes_table_and_grids(tmp_path):
    from fmkit.augment import demo

    demo.run_demo(str(tmp_path), seeds=(0,), epochs=1)
    files = os.listdir(tmp_path)
    assert "augment_demo.md" in files
    assert {"augment_copy_paste.png", "augment_stain_jitter.png", "augment_randaugment.png",
            "augment_cutmix.png", "augment_mixup.png", "augment_cutout.png", "augment_lisa.png",
            "augment_spectrogram_copy_paste_jitter.png"} <= set(files)
    table = open(tmp_path / "augment_demo.md").read()
    assert "targeted (Copy-Paste, same label)" in table and "OOD accuracy" in table
