"""Side-by-side benchmarks of clbscf-proxy against nginx (and nginx + uvicorn), run by
``benchmarks/run.py``; not part of ``make test``. See benchmarks/README.md."""
