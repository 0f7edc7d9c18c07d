"""lrtune workers: schedule math, the torch adapter, workloads and the Ray Tune runner."""
