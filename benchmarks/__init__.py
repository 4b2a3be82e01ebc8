"""Side-by-side speed and memory benchmarks of autoseg against nnU-Net v2 (not part of CI)."""
