"""GDDIMScheduler against diffusers' own DDIM/DDPM steps and closed forms; a UNet2DModel folder as ε-model."""

from __future__ import annotations

import json
import shutil

import diffusers
import numpy as np
import pytest
import torch

import gddim
import gddim.exact
from gddim.diffusers import DiscreteVP, GDDIMScheduler, load_unet_eps, time_of_alpha_bar
from gddim.errors import CheckpointError, MissingFileError, SettingsError
from gddim.noise_levels import ZERO_SNR_STAND_IN

S2 = 0.25  # variance of the Gaussian toy data x_0 ~ N(0, S2)
PAPER = {"predict_x0": False, "use_corrector": False, "lower_order_final": False}  # the paper's gDDIM, ε form


def paper(**options) -> dict:
    """Scheduler options of the paper's sampler (the ε form, no corrector) that the given options extend."""
    return {**PAPER, **options}


# every sampler variant by its scheduler options; the first four are the orders of the ε form
VARIANTS = [
    paper(solver_order=1), paper(solver_order=2), paper(solver_order=3), paper(solver_order=4),
    paper(solver_order=1, predict_x0=True), paper(solver_order=3, predict_x0=True),
    {**paper(solver_order=4, algorithm_type="dpmsolver++"), "predict_x0": None},
    paper(solver_order=2, use_corrector=True), paper(solver_order=3, predict_x0=True, use_corrector=True),
    paper(solver_order=2, predict_x0=True, use_corrector=True, disable_corrector=[0, 3]),
    paper(solver_order=3, interpolation="sqrt_t"), paper(solver_order=3, predict_x0=True, interpolation="logsnr"),
    paper(solver_order=3, lower_order_final=True), paper(solver_order=2, predict_x0=True, lam=0.5),
    paper(solver_order=1, lam=1.0), paper(solver_order=2, predict_x0=True, lam=0.3, use_corrector=True),
    {},  # the default: gddim.sample's
]


def gaussian_eps(scheduler, x, t):
    """The exact ε at integer timestep t for Gaussian data: √(1-ᾱ) x / (ᾱ S2 + 1 - ᾱ)."""
    a = float(scheduler.alphas_cumprod[t])
    return (1 - a) ** 0.5 * x / (a * S2 + 1 - a)


def dirac_eps(scheduler, x, t, mu):
    a = float(scheduler.alphas_cumprod[t])
    return (x - a**0.5 * mu) / (1 - a) ** 0.5


def loop(scheduler, x, model, generator=None):
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x


def wobbly(scheduler):
    """A fixed nonlinear 'random network': the Gaussian ε plus a tanh of a random per-pixel mixing."""
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    return lambda x, t: gaussian_eps(scheduler, x, t) + 0.2 * torch.tanh(w * x + 1e-3 * float(t))


@pytest.mark.parametrize("spacing,steps,to_one,data", [("leading", 10, True, False), ("trailing", 20, False, True),
                                                       ("trailing", 50, True, True), ("leading", 25, False, False)])
def test_solver_order_1_is_ddim(spacing, steps, to_one, data):
    # one model output per step is DDIM, in the ε form and in the data form alike (FAST §1)
    ours = GDDIMScheduler(solver_order=1, predict_x0=data, timestep_spacing=spacing, set_alpha_to_one=to_one)
    ddim = diffusers.DDIMScheduler(timestep_spacing=spacing, set_alpha_to_one=to_one, clip_sample=False)
    ours.set_timesteps(steps)
    ddim.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ddim.timesteps)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    got, want = loop(ours, x, wobbly(ours)), loop(ddim, x, wobbly(ddim))
    assert want.abs().max() > 0.1
    # DDIM forms its coefficients in float32 each step: ~1e-7 per step, accumulated over up to 50 steps
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 20), ("linspace", 7)])
def test_lam1_is_ddpm_posterior_step(spacing, steps):
    # the same generator draws the same noise: mean and variance must both agree for the loops to match
    ours = GDDIMScheduler(**paper(solver_order=1), timestep_spacing=spacing, lam=1.0)
    ddpm = diffusers.DDPMScheduler(timestep_spacing=spacing, clip_sample=False)
    ours.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ddpm.timesteps)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    got = loop(ours, x, wobbly(ours), torch.Generator().manual_seed(5))
    want = loop(ddpm, x, wobbly(ddpm), torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_intermediate_lam_step_has_the_closed_form_mean_and_variance():
    # MATH §3.3: mean √(ᾱs/ᾱt) x + [Ψ̂ - Ψ] √(1-ᾱt) ε with Ψ̂ = √(ᾱs/ᾱt) ρ^((1+λ²)/2), variance (1-ᾱs)(1-ρ^λ²)
    lam, n = 0.5, 40000
    sched = GDDIMScheduler(**paper(solver_order=1), lam=lam)
    sched.set_timesteps(4)
    t, s = (int(v) for v in sched.timesteps[1:3])
    at, as_ = (float(sched.alphas_cumprod[v]) for v in (t, s))
    sched.step(torch.zeros(1), sched.timesteps[0], torch.zeros(1))  # move to step 1
    x, eps = torch.full((n,), 0.7, dtype=torch.float64), torch.full((n,), -0.4, dtype=torch.float64)
    out = sched.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    rho = (1 - as_) * at / ((1 - at) * as_)
    psi = (as_ / at) ** 0.5
    mean = psi * 0.7 + (psi * rho ** ((1 + lam**2) / 2) - psi) * (1 - at) ** 0.5 * -0.4
    var = (1 - as_) * (1 - rho ** (lam**2))
    assert abs(float(out.mean()) - mean) < 5 * (var / n) ** 0.5
    assert abs(float(out.var()) / var - 1) < 5 * (2 / n) ** 0.5


def test_v_prediction_equals_epsilon_with_the_converted_output():
    eps_s = GDDIMScheduler(**paper(solver_order=3))
    v_s = GDDIMScheduler(**paper(solver_order=3), prediction_type="v_prediction")
    eps_s.set_timesteps(12)
    v_s.set_timesteps(12)
    model = wobbly(eps_s)

    def v_model(x, t):  # v = √ᾱ ε - √(1-ᾱ) x_0 with x_0 = (x - √(1-ᾱ) ε)/√ᾱ
        a, e = float(v_s.alphas_cumprod[t]), model(x, t)
        return a**0.5 * e - (1 - a) ** 0.5 * (x - (1 - a) ** 0.5 * e) / a**0.5

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got, want = x, x
    for t in eps_s.timesteps:
        a, b = v_s.step(v_model(got, t), t, got), eps_s.step(model(want, t), t, want)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-10, atol=1e-10)
        got, want = a.prev_sample, b.prev_sample
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", VARIANTS)
@pytest.mark.parametrize("to_one", [True, False])
def test_every_variant_is_exact_for_dirac_data(options, to_one):
    # ε is constant along the ODE for a single data point (MATH §1.5): every order and form lands on the
    # exact state; a stochastic step with the exact data prediction keeps the exact law, a point at ᾱ = 1
    if options.get("lam", 0) > 0 and not to_one:
        pytest.skip("a stochastic run that stops at ᾱ_0 ends on a random state")
    if options.get("interpolation") == "logsnr" and to_one:
        options = {**options, "solver_order": 1, "use_corrector": False}  # log-SNR is infinite at ᾱ = 1
    sched = GDDIMScheduler(**options, set_alpha_to_one=to_one, beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(9)
    mu = torch.linspace(-1, 1, 6, dtype=torch.float64)
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps_star = dirac_eps(sched, x, sched.timesteps[0], mu)
    out = loop(sched, x, lambda y, t: dirac_eps(sched, y, t, mu))
    a = sched.final_alpha_cumprod
    torch.testing.assert_close(out, a**0.5 * mu + (1 - a) ** 0.5 * eps_star, rtol=0, atol=1e-10)


def sample_options(options: dict) -> dict:
    """The same sampler in gddim.sample's option names (no option: gddim.sample's default)."""
    if not options:
        return {}
    by_algorithm = options.get("predict_x0") is None and options.get("algorithm_type") == "dpmsolver++"
    data = options.get("predict_x0") or by_algorithm
    return {"order": options["solver_order"] - 1, "lam": options.get("lam", 0.0),
            "prediction": "data" if data else "eps", "corrector": options["use_corrector"],
            "interpolation": options.get("interpolation", "t"), "lower_order_final": options["lower_order_final"]}


@pytest.mark.parametrize("options", [v for v in VARIANTS if "disable_corrector" not in v])
def test_every_variant_equals_gddim_sample(options):
    # the same float64 recursion through the same Stepper: agreement to round-off, on an exact mixture score
    sched = GDDIMScheduler(**options, final_sigmas_type="sigma_min")
    sched.set_timesteps(8)
    process = sched.process
    data = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = gddim.exact.exact_eps(process, data)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    times = np.append(process.time_of_timestep(sched.timesteps.numpy()), process.time_of_timestep(0))
    model = lambda y, t: exact(y, torch.full((len(y),), float(process.time_of_timestep(int(t))), dtype=torch.float64))
    got = loop(sched, x, model, torch.Generator().manual_seed(7))
    want = gddim.sample(process, exact, x, nfe=8, grid=times, generator=torch.Generator().manual_seed(7),
                        **sample_options(options))
    assert (got - x).abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_disable_corrector_leaves_those_steps_uncorrected():
    # UniPC's list: the result of step k is not corrected; disabling every step is no corrector at all
    def run(**options):
        sched = GDDIMScheduler(**{**paper(solver_order=2, predict_x0=True), **options})
        sched.set_timesteps(6)
        return loop(sched, torch.linspace(-2, 2, 7, dtype=torch.float64), wobbly_1d(sched))

    plain, full = run(), run(use_corrector=True)
    assert torch.equal(run(use_corrector=True, disable_corrector=list(range(6))), plain)
    assert torch.equal(run(use_corrector=True, disable_corrector=[10]), full)  # beyond the run: no effect
    partial = run(use_corrector=True, disable_corrector=[1, 2])
    assert (partial - plain).abs().max() > 1e-4 and (partial - full).abs().max() > 1e-4


def test_disabling_step_k_changes_the_loop_from_the_next_call_on():
    # step k's result is corrected with the output at its end, i.e. inside call k + 1
    def states(**options):
        sched = GDDIMScheduler(solver_order=2, predict_x0=True, use_corrector=True, **options)
        sched.set_timesteps(6)
        x, model, out = torch.linspace(-2, 2, 7, dtype=torch.float64), wobbly_1d(sched), []
        for t in sched.timesteps:
            x = sched.step(model(x, t), t, x).prev_sample
            out.append(x)
        return out

    full, off = states(), states(disable_corrector=[2])
    assert all(torch.equal(a, b) for a, b in zip(full[:3], off[:3]))
    assert (full[3] - off[3]).abs().max() > 1e-6


def wobbly_1d(scheduler):
    return lambda x, t: gaussian_eps(scheduler, x, t) + 0.2 * torch.tanh(3 * x + 1e-3 * float(t))


def test_higher_order_converges_faster_on_gaussian_data():
    # the probability-flow ODE of Gaussian data scales x by std_end/std_start: an exact answer to converge to
    def error(order, steps):
        sched = GDDIMScheduler(**paper(solver_order=order))
        sched.set_timesteps(steps)
        x = torch.linspace(-2, 2, 5, dtype=torch.float64)
        a_t = float(sched.alphas_cumprod[sched.timesteps[0]])
        exact = x * (S2 / (a_t * S2 + 1 - a_t)) ** 0.5
        return float((loop(sched, x, lambda y, t: gaussian_eps(sched, y, t)) - exact).abs().max())

    errors = np.array([[error(q, n) for n in (10, 20)] for q in range(1, 5)])
    assert np.all(errors[:, 1] < errors[:, 0])
    assert np.all(np.diff(errors[:, 1]) < 0)  # at 20 steps each order beats the one below
    assert errors[3, 1] < errors[0, 1] / 10


def test_begin_index_warms_up_from_there():
    sched = GDDIMScheduler(solver_order=3)
    sched.set_timesteps(10)
    mu = torch.linspace(-1, 1, 6, dtype=torch.float64)
    eps_star = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    start = 4
    a = float(sched.alphas_cumprod[sched.timesteps[start]])
    x = a**0.5 * mu + (1 - a) ** 0.5 * eps_star
    sched.set_begin_index(start)
    for t in sched.timesteps[start:]:
        x = sched.step(dirac_eps(sched, x, t, mu), t, x).prev_sample
    torch.testing.assert_close(x, mu, rtol=0, atol=1e-10)


def test_a_ddim_config_carries_its_schedule():
    ddim = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(GDDIMScheduler.from_config(ddim.config).alphas_cumprod, ddim.alphas_cumprod.double())


def test_add_noise_and_velocity_match_ddpm():
    ours, ddpm = GDDIMScheduler(), diffusers.DDPMScheduler()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    steps = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, steps), ddpm.add_noise(x0, noise, steps))
    torch.testing.assert_close(ours.get_velocity(x0, noise, steps), ddpm.get_velocity(x0, noise, steps))


@pytest.mark.parametrize("kwargs,match", [
    ({"solver_order": 5}, "solver_order"), ({"solver_order": 0}, "solver_order"), ({"solver_order": 1.5}, "solver_order"),
    ({"lam": 1.5}, "lam"), ({"lam": -0.1}, "lam"),
    ({"lam": 0.5, "solver_order": 2, "predict_x0": False}, "predict_x0=True"),
    ({"lam": 0.5, "use_corrector": True, "predict_x0": False}, "predict_x0=True"), ({"predict_x0": "yes"}, "predict_x0"),
    ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"), ({"final_sigmas_type": "sigma_max"}, "final_sigmas_type"),
    ({"set_alpha_to_one": "no"}, "set_alpha_to_one"), ({"interpolation": "log"}, "interpolation"),
    ({"use_corrector": 1}, "use_corrector"), ({"lower_order_final": None}, "lower_order_final"),
    ({"disable_corrector": [-1]}, "disable_corrector"), ({"disable_corrector": 3}, "disable_corrector"),
    ({"interpolation": "logsnr", "solver_order": 2}, "final_sigmas_type='sigma_min'"),
    ({"prediction_type": "flow"}, "prediction_type"), ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(SettingsError, match=match):
        GDDIMScheduler(**kwargs)


def test_misuse_is_a_clear_error():
    sched = GDDIMScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(SettingsError, match="set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(SettingsError, match="num_inference_steps"):
        sched.set_timesteps(1001)
    sched.set_timesteps(5)
    sched.step(x, sched.timesteps[0], x)
    with pytest.raises(SettingsError, match="in order"):
        sched.step(x, sched.timesteps[3], x)


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    return folder


def test_works_inside_ddpm_pipeline(pipeline_folder):
    sched = GDDIMScheduler.from_pretrained(pipeline_folder, subfolder="scheduler", solver_order=3)
    assert sched.config.solver_order == 3 and sched.config.num_train_timesteps == 1000
    pipe = diffusers.DDPMPipeline.from_pretrained(pipeline_folder, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    # the same loop by hand: the pipeline drew its start noise first from the same seed
    unet = diffusers.UNet2DModel.from_pretrained(pipeline_folder, subfolder="unet")
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    sched.set_timesteps(4)
    with torch.no_grad():
        x = loop(sched, x, lambda y, t: unet(y, t).sample)
    assert images.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(images, (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_unet_folder_as_eps_model(pipeline_folder):
    model = load_unet_eps(pipeline_folder)
    process = model.process
    assert isinstance(process, DiscreteVP) and (model.data_channels, model.image_size) == (1, 8)
    unet = diffusers.UNet2DModel.from_pretrained(pipeline_folder, subfolder="unet")
    u = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # the model's own time convention: timestep n sits at t = (n + 1)/N
    t = torch.full((2,), float(process.time_of_timestep(499)), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(u, t), unet(u, torch.tensor([499, 499])).sample, rtol=1e-5, atol=1e-6)
    # another VP: the timestep whose ᾱ equals the process's ᾱ(t)
    vp = gddim.VP()
    other = load_unet_eps(pipeline_folder, process=vp)
    t_vp = time_of_alpha_bar(vp, process.alphas_cumprod[[10, 300, 900]])
    np.testing.assert_allclose(other.timesteps(torch.from_numpy(t_vp)).numpy(), [10, 300, 900], atol=1e-6)
    with pytest.raises(SettingsError, match="ᾱ outside vp-discrete's range"):  # noisier than timestep N - 1
        time_of_alpha_bar(process, 0.5 * process.alphas_cumprod[-1])
    x = gddim.sample(process, model, process.prior_sample((2, 1, 8, 8)), nfe=3)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_unet_folder_has_the_schedulers_process(pipeline_folder, tmp_path):
    # grid files tuned on the folder's model fit GDDIMScheduler.set_timesteps: both see the same DiscreteVP
    config = json.loads((pipeline_folder / "scheduler" / "scheduler_config.json").read_text())
    for schedule in (config, {**config, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}):
        model = load_unet_eps(pipeline_folder / "unet", schedule=schedule)
        sched = GDDIMScheduler.from_config({**schedule, "clip_sample": False}, predict_x0=True)
        assert model.process.config() == sched.process.config()
    assert model.process.alphas_cumprod[-1] == ZERO_SNR_STAND_IN


def test_sample_command_takes_a_diffusers_folder(pipeline_folder, tmp_path):
    from gddim.cli import main

    assert main(["sample", str(pipeline_folder), "--nfe", "4", "--order", "1", "--num-samples", "3", "--out", str(tmp_path / "s")]) == 0
    images = np.load(tmp_path / "s.npz")
    array = images[images.files[0]]
    assert array.shape[0] == 3 and (tmp_path / "s.png").stat().st_size > 0



def test_tune_grid_command_takes_a_diffusers_folder_whose_scheduler_takes_the_file(pipeline_folder, tmp_path):
    from gddim.cli import main
    from gddim.grid_files import read_grid_file

    grid = tmp_path / "grid.json"
    assert main(["tune-grid", str(pipeline_folder), "--nfe", "5", "--out", str(grid), "--batch", "2",
                 "--candidates", "12", "--rtol", "1e-2"]) == 0
    record = read_grid_file(grid)
    assert record["tuned_on"]["checkpoint"] == str(pipeline_folder.resolve()) and record["steps"] == 5
    sched = GDDIMScheduler.from_pretrained(pipeline_folder, subfolder="scheduler")
    sched.set_timesteps(timesteps=grid)  # the folder's own DiscreteVP: the file's process matches
    np.testing.assert_array_equal(sched.timesteps.numpy(), np.round(np.array(record["times"][:-1]) * 1000 - 1))


def test_sample_command_on_a_folder_without_its_schedule_is_one_line(pipeline_folder, tmp_path, capsys):
    from gddim.cli import main

    folder = tmp_path / "no-schedule"
    shutil.copytree(pipeline_folder, folder, ignore=shutil.ignore_patterns("scheduler"))
    assert main(["sample", str(folder), "--nfe", "4", "--num-samples", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gddim sample: error: no scheduler_config.json in {folder} or {folder / 'scheduler'}")
    assert err.count("\n") == 1 and "scheduler.save_pretrained" in err and not (tmp_path / "s.npz").exists()

def test_unet_folder_converts_v_prediction(pipeline_folder, tmp_path):
    config = json.loads((pipeline_folder / "scheduler" / "scheduler_config.json").read_text())
    model = load_unet_eps(pipeline_folder / "unet", schedule={**config, "prediction_type": "v_prediction"})
    unet = model.unet
    u = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = float(model.process.alphas_cumprod[199])
    with torch.no_grad():
        v = unet(u, torch.tensor([199, 199])).sample
        got = model(u, torch.full((2,), float(model.process.time_of_timestep(199)), dtype=torch.float64))
    torch.testing.assert_close(got, a**0.5 * v + (1 - a) ** 0.5 * u, rtol=1e-5, atol=1e-6)
    with pytest.raises(MissingFileError, match="scheduler_config.json"):
        load_unet_eps(pipeline_folder / "unet")
    with pytest.raises(MissingFileError, match="config.json"):
        load_unet_eps(tmp_path)
    with pytest.raises(SettingsError, match="VP"):
        load_unet_eps(pipeline_folder, process=gddim.CLD())


def test_pickled_unet_weights_are_never_loaded(pipeline_folder, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(pipeline_folder, folder)
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=False)  # diffusion_pytorch_model.bin, a pickle
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"cannot load the diffusers model in {folder}: .*safetensors"):
        load_unet_eps(folder)
