"""Seconds to generate the squares benchmark in memory (one JSON line).

Example: python benchmarks/squares.py --n 1000 --size 128
"""

import argparse
import json
import statistics
import time

import torch

from icam.data import make_squares


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    results = {}
    for size in args.size:
        make_squares(100, size)  # warm-up
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            make_squares(args.n, size, seed=r)
            times.append(time.perf_counter() - start)
        results[str(size)] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    print(json.dumps({"benchmark": "squares", "n": args.n, "seconds": results, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
