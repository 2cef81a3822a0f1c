"""Speed and memory benchmarks: `make bench-*`; numbers and how to read them in docs/benchmarks.md."""
