"""The Falcon-H1 model: config-driven modules, the reference SSD, and (on GPU) Triton fast paths."""
