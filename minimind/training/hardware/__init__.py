"""What the machine offers a rank: its CPU cores and precision, the device's peak FLOP/s, and the toolchain the
offload config's host optimizer needs."""
