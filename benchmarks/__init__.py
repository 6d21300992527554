"""The jitbpf benchmark suite: interpreter, JIT and native C side by side (run with ``python -m benchmarks``)."""
