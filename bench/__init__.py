"""Benchmarks: relay side by side with direct, haproxy and ssh -R, in one run (`make bench`)."""
