"""The GPU check of the data path; same as `mmvit-study bench gpu` (needs a CUDA device).
Usage: python benchmarks/gpu.py [--patches 20000] [--batch-size 1024]"""

import sys

from mmvit.cli import app

if __name__ == "__main__":
    app(["bench", "gpu", *sys.argv[1:]], prog_name="mmvit-study")
