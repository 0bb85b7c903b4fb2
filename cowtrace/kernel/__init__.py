"""Everything that talks to the kernel: symbols, calibration, the BPF program and its maps."""
