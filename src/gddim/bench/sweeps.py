"""The NFE sweeps and tolerances of the benchmarks (BENCHMARKS.md §1, §3), importable without torch so that
`gddim bench --help` can show them at once; gddim.bench.exact_score and coefficient_times use them."""

NFES = (5, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
REFERENCE_RTOL = 1e-10  # the reference ODE is also solved at half of it: the difference is reported
QUICK = {"batch": 16, "nfes": (5, 10, 20, 50), "rtol": 1e-8}  # the smoke-test size of `gddim bench exact --quick`
COEFFICIENT_NFES = (10, 50, 100, 500, 1000)
# beyond the paper's orders, the default ("gddim", q = 2) and the costliest FAST variants, as spec strings (gddim.spec)
COEFFICIENT_VARIANTS = ("gddim", "gddim:q=3:pred=data:corr=1:lof=1", "gddim:q=3:pred=data:corr=1:interp=logsnr:lof=1",
                        "gddim:q=3:pred=eps:corr=1:interp=sqrt_t", "gddim:q=3:lam=0.5:pred=data:corr=1",
                        "gddim:q=2:lam=1:pred=data:corr=1")
