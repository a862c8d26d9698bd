"""Accelerators this host may not have: per-chip figures (`chips`), compile-only TPU topologies by their Cloud
names (`topology`), and a roofline estimate from a compiled step (`roofline`)."""
