"""What the exact-score sweep's records say (acceleration factors, R against L, deterministic against stochastic)
as JSON and text, and its plot; records name their sampler by its canonical spec in "sampler"."""

from __future__ import annotations

from pathlib import Path

L_VS_R_NFES = (10, 20, 50)
SMALL_NFES = (5, 10, 20)
BASELINES = ("em", "euler", "sscs", "ancestral")  # whose data error at the largest NFE is a target
L_VS_R_ORDERS = (0, 2)
DETERMINISTIC_VS_STOCHASTIC = ("gddim:q=0", "gddim:q=2", "gddim:lam=0.5", "gddim:lam=1")


def by_sampler(records: list[dict], process_name: str, field: str) -> dict[str, dict[int, float]]:
    """{sampler: {nfe: value}} for one process, leaving out missing values."""
    table: dict[str, dict[int, float]] = {}
    for r in records:
        if r["process"] == process_name and r[field] is not None:
            table.setdefault(r["sampler"], {})[r["nfe"]] = r[field]
    return table


def _processes(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["process"] for r in records))


def acceleration_factors(records: list[dict], floors: dict[str, float] | None = None) -> dict:
    """Per process and baseline: the target data error and, per sampler, the NFE reaching it and the factor.

    floors (per process, the reference ODE solution's own data error) flag targets below it: deterministic
    samplers converge to that floor, so they cannot reach such a target at any NFE.
    """
    out = {}
    for name in _processes(records):
        errors = by_sampler(records, name, "data_error")
        for baseline in (b for b in BASELINES if b in errors):
            ref_nfe = max(errors[baseline])
            target = errors[baseline][ref_nfe]
            samplers = {}
            for sampler, by_nfe in errors.items():
                if sampler == baseline:
                    continue
                reached = [n for n in sorted(by_nfe) if by_nfe[n] <= target]
                nfe = reached[0] if reached else None
                samplers[sampler] = {"nfe": nfe, "factor": ref_nfe / nfe if nfe else None}
            entry = {"target_data_error": target, "samplers": samplers}
            if floors and name in floors:
                entry |= {"reference_data_error": floors[name], "below_reference": target < floors[name]}
            out.setdefault(name, {})[f"{baseline}@{ref_nfe}"] = entry
    return out


def _rows_by_nfe(records: list[dict], field: str, nfes: tuple[int, ...], row) -> dict:
    """{process: {str(nfe): row(table, nfe)}} from each process's {sampler: {nfe: field}} table; empty rows left out."""
    out = {}
    for name in _processes(records):
        table = by_sampler(records, name, field)
        for n in nfes:
            if cells := row(table, n):
                out.setdefault(name, {})[str(n)] = cells
    return out


def _l_vs_r_row(paths: dict[str, dict[int, float]], n: int) -> dict:
    pairs = ((q, paths.get(f"gddim:q={q}", {}), paths.get(f"gddim:q={q}:param=L", {})) for q in L_VS_R_ORDERS)
    return {f"q={q}": {"R": r[n], "L": l[n], "L/R": l[n] / r[n] if r[n] else None}
            for q, r, l in pairs if n in r and n in l}


def l_vs_r(records: list[dict], nfes: tuple[int, ...] = L_VS_R_NFES) -> dict:
    """Path errors of the R and L parameterizations at the same order and NFE, and their ratio L/R."""
    return _rows_by_nfe(records, "path_error", nfes, _l_vs_r_row)


def _stochastic_row(errors: dict[str, dict[int, float]], n: int) -> dict:
    return {s: errors[s][n] for s in DETERMINISTIC_VS_STOCHASTIC if n in errors.get(s, {})}


def deterministic_vs_stochastic(records: list[dict], nfes: tuple[int, ...] = SMALL_NFES) -> dict:
    """Data errors of gddim at λ = 0 (q = 0 and 2), 0.5 and 1 at small NFE."""
    return _rows_by_nfe(records, "data_error", nfes, _stochastic_row)


def summarize(records: list[dict], floors: dict[str, float] | None = None) -> dict:
    return {"acceleration": acceleration_factors(records, floors), "l_vs_r_path_error": l_vs_r(records),
            "deterministic_vs_stochastic_data_error": deterministic_vs_stochastic(records)}


def format_summary(summary: dict) -> str:
    """The acceleration factors and L-vs-R path errors as plain text, one line per entry."""
    lines = []
    for name, targets in summary["acceleration"].items():
        for target, entry in targets.items():
            note = (f"; below the reference ODE's own {entry['reference_data_error']:.4g}: out of reach of "
                    "deterministic samplers" if entry.get("below_reference") else "")
            lines.append(f"{name}: target {target} (data error {entry['target_data_error']:.4g}{note})")
            for sampler, hit in entry["samplers"].items():
                if sampler.startswith("gddim"):
                    reach = f"NFE {hit['nfe']} ({hit['factor']:.3g}x)" if hit["nfe"] else "not reached"
                    lines.append(f"    {sampler:<18} {reach}")
    for name, by_nfe in summary["l_vs_r_path_error"].items():
        for nfe, by_order in by_nfe.items():
            text = ", ".join(f"{q}: R {e['R']:.3g} L {e['L']:.3g}" for q, e in by_order.items())
            lines.append(f"{name}: path error at NFE {nfe}: {text}")
    for name, by_nfe in summary["deterministic_vs_stochastic_data_error"].items():
        for nfe, row in by_nfe.items():
            lines.append(f"{name}: data error at NFE {nfe}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return "\n".join(lines)


def plot_process(records: list[dict], process_name: str, path: Path, dataset: str, floor: float | None = None) -> None:
    """Path error and data error against NFE (log-log), one line (and one colour) per sampler."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    samplers = list(by_sampler(records, process_name, "data_error"))
    tab20 = colormaps["tab20"].colors
    colours = dict(zip(samplers, tab20[::2] + tab20[1::2]))
    fig = Figure(figsize=(13, 5), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, field in zip(axes, ("path_error", "data_error")):
        for sampler, values in by_sampler(records, process_name, field).items():
            nfe = sorted(values)
            style = "-" if sampler.startswith("gddim") else "--"
            ax.loglog(nfe, [values[n] for n in nfe], style, marker="o", markersize=3, label=sampler,
                      color=colours[sampler])
        ax.set_xlabel("NFE")
        ax.set_ylabel(field.replace("_", " ") + " (RMS per dimension)")
        ax.grid(True, which="both", alpha=0.3)
    if floor is not None:
        axes[1].axhline(floor, color="black", linestyle=":", label="exact samples of p(t_end)")
    axes[0].set_title(f"{process_name.upper()}: distance to the probability-flow ODE solution")
    axes[1].set_title(f"{process_name.upper()}: distance to the nearest {dataset} point")
    axes[1].legend(fontsize=8, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
