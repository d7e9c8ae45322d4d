"""Benchmarks that `gddim bench ...` runs and that benchmarks/*.py reproduce committed results with.

records: the measurements every benchmark shares (errors, counted model calls, reference solutions, machine,
result files); exact_score and exact_summary: every sampler on the exact ε of a finite data set (BENCHMARKS.md §1);
coefficient_times: coefficient build time from a cold start (§3); peers, with diffusers_vp: gDDIM beside other
libraries' samplers on one process family; diffusers_flow: diffusers' flow-matching samplers beside
gDDIM on exact flow-matching velocities; overhead: the cost of a scheduler step; sweeps: the NFEs and
tolerances, importable without torch for `gddim bench --help`.
"""
