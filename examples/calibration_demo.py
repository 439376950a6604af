"""ProCal end to end, offline: proximity bias, then every calibrator with and without ProCal.

    python examples/calibration_demo.py [OUT_DIR]      (same as `fmkit demo calibration`)
"""
import sys

from fmkit.calibration.demo import run_demo

if __name__ == "__main__":
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "fmkit_demo_calibration")
