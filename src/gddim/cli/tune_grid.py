"""`gddim tune-grid`: a grid tuned to a trained model's own trajectories (FAST §5), written as a grid file."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputExistsError
from .options import device, integer, load_model, non_empty, non_negative, number, positive


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune-grid",
        help="tune a time grid to a checkpoint's EMA model (or a diffusers UNet2DModel) at one NFE -> grid file (JSON)",
        description="Draws --batch prior samples, solves their probability-flow ODE accurately with the model, "
                    "finds the --nfe grid among --candidates times that minimizes the summed error of single gDDIM "
                    "steps, and keeps it, a smoothed form of it or a named grid (quadratic, uniform, angle, "
                    "blend): whichever brings the default sampler nearest the accurate solution. No data needed. "
                    "Use the file with "
                    "`gddim sample/evaluate --grid FILE`, gddim.sample(..., grid=FILE) or, for a diffusers folder, "
                    "GDDIMScheduler.set_timesteps(timesteps=FILE).")
    p.add_argument("checkpoint", type=non_empty, help="run folder, checkpoint folder, or a local diffusers UNet2DModel folder")
    p.add_argument("--nfe", type=positive, required=True, help="the NFE the grid is for (CLD: the denoising step included)")
    p.add_argument("--out", type=non_empty, required=True, help="grid file to write (JSON); an existing file is never overwritten")
    p.add_argument("--batch", type=positive, default=64, help="prior samples to tune on (default 64)")
    p.add_argument("--candidates", type=integer(2), help="candidate times, uniform in log-SNR (default 80)")
    p.add_argument("--seed", type=non_negative, default=0, help="seed of the prior samples (default 0)")
    p.add_argument("--rtol", type=number(0.0, 1.0, low_open=True, high_open=True), help="tolerance of the accurate ODE solve (default 1e-5)")
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default: where the checkpoint's network loads, the CPU)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..distributed import process_group, run_on_rank0

    # one adaptive ODE solve over the whole batch: under torchrun rank 0 tunes and writes, the others wait for it
    with process_group(args.device) as group:
        run_on_rank0(group, _tune, args)
    return 0


def _tune(args) -> None:
    import torch

    from ..grid_files import grid_record, write_grid_file
    from ..tuning import CANDIDATES, STEP_SAMPLER, TEACHER_RTOL, tune, tuned_steps

    candidates = CANDIDATES if args.candidates is None else args.candidates
    rtol = TEACHER_RTOL if args.rtol is None else args.rtol
    out = Path(args.out).expanduser()
    if out.exists():
        raise OutputExistsError(f"{out} exists; remove it or choose another --out")
    process, model, source = load_model(args.checkpoint, args.device)
    tuned_steps(process, args.nfe, candidates)  # bad settings fail before minutes of ODE solving
    device = next(model.parameters()).device
    size = model.image_size if isinstance(model.image_size, tuple) else (model.image_size,) * 2
    shape = (args.batch, model.data_channels, *size)
    u_T = process.prior_sample(shape, generator=torch.Generator(device=device).manual_seed(args.seed), device=device)
    with torch.no_grad():
        tuned = tune(process, model, u_T, args.nfe, candidates, rtol=rtol, progress=True)
    tuned_on = {"checkpoint": source, "batch": args.batch, "seed": args.seed,
                "candidates": candidates, "rtol": rtol, "model_calls": tuned.model_calls,
                "seconds": round(tuned.seconds, 2), "step_sampler": STEP_SAMPLER.label, "chosen": tuned.chosen,
                "judged_by": tuned.sampler, "end_errors": tuned.end_errors}
    write_grid_file(out, grid_record(tuned.times, args.nfe, process, tuned_on))
    print(f"grid of {len(tuned.times) - 1} steps for nfe={args.nfe} ({tuned.chosen}): "
          + ", ".join(f"{t:.4g}" for t in tuned.times))
    print("end error on the tuning batch: " + ", ".join(f"{k} {v:.3g}" for k, v in tuned.end_errors.items()))
    print(f"{tuned.model_calls} model calls on {args.batch} samples, {tuned.seconds:.1f} s -> {out}")
