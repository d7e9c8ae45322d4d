"""The NFE sweeps and tolerances of the benchmarks (BENCHMARKS.md §1, §3), importable without torch so that
`gddim bench --help` can show them at once; gddim.benchmark uses them."""

NFES = (5, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
REFERENCE_RTOL = 1e-10  # the reference ODE is also solved at half of it: the difference is reported
QUICK = {"batch": 16, "nfes": (5, 10, 20, 50), "rtol": 1e-8}  # the smoke-test size of `gddim bench exact --quick`
COEFFICIENT_NFES = (10, 50, 100, 500, 1000)
# (order, λ, multistep options) beyond the paper's orders: the default and the costliest FAST variants
COEFFICIENT_VARIANTS = (
    (3, 0.0, {"prediction": "data", "corrector": True, "lower_order_final": True}),
    (3, 0.0, {"prediction": "data", "corrector": True, "lower_order_final": True, "interpolation": "logsnr"}),
    (3, 0.0, {"prediction": "eps", "corrector": True, "interpolation": "sqrt_t"}),
    (3, 0.5, {"prediction": "data", "corrector": True}),
    (2, 1.0, {"prediction": "data", "corrector": True}),
)
