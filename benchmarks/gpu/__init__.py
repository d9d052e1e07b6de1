"""The pieces of benchmarks/gpu_check.py: the jobs each subprocess runs (jobs.py, baseline.py) and the
report rebuilt from OUT/results.jsonl after each of them (report.py)."""
