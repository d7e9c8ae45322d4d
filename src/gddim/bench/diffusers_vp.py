"""diffusers' samplers on the VP process: the peer family of the VP exact-score benchmark (gddim.bench.peers).

- the peers get `trained_betas` of N_TRAIN steps whose ᾱ_n equals the VP's ᾱ(τ_n) at times τ_n uniform from
  t_end (n = 0) to t_start (n = N_TRAIN - 1); N_TRAIN is a multiple of every NFE, so trailing timesteps are an
  exact stride;
- each peer runs at every `timestep_spacing` and, for DPM-Solver++ and UniPC, with Karras σ (diffusers builds
  the Karras ramp from the training σ_max to σ_min whatever the spacing, so it runs once per landing);
- every run lands on ᾱ_0 (t_end, like gDDIM): DDIM with set_alpha_to_one=False, DPM-Solver and UniPC with
  final_sigmas_type="sigma_min", DEIS by default; Karras runs also land on σ = 0 (t = 0, "karras-zero"), since
  their ramp already ends at σ_min and the σ_min landing makes their last step an identity;
- the adapter evaluates the exact ε at the time whose float64 ᾱ equals the noise level the peer's update
  assumes: its float32 σ_k (DPM-Solver, UniPC, DEIS) or its float32 ᾱ at the timestep (DDIM). diffusers would
  hand a network the rounded integer timestep instead; the gap between the two is recorded (Karras only).
"""

from __future__ import annotations

import diffusers
import numpy as np
import torch

from ..diffusers import time_of_alpha_bar
from ..errors import SettingsError
from ..processes import VP
from ..sampling import EpsFn
from .peers import PeerRun

N_TRAIN = 3000  # divisible by 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000
T_MAX = 1.01  # float32 rounding puts the peers' first ᾱ a hair beyond t_start = 1
PEERS = ("ddim", "deis-2", "deis-3", "dpm++2m", "dpm++3m", "unipc-2", "unipc-3")
SPACINGS = ("trailing", "linspace", "leading")
KARRAS_PEERS = ("dpm++2m", "dpm++3m", "unipc-2", "unipc-3")
KARRAS_LANDINGS = {"karras": "sigma_min", "karras-zero": "zero"}  # setting -> final_sigmas_type
PRECISION = ("diffusers keeps ᾱ and σ in float32 and DPM-Solver steps in float32; gDDIM and the reference run in "
             "float64")


def peer_betas(process: VP, n_train: int = N_TRAIN) -> np.ndarray:
    """β_n with Π_{i<=n}(1-β_i) = ᾱ(τ_n), τ_n uniform from t_end (n = 0) to t_start (n = n_train - 1)."""
    tau = process.t_end + np.arange(n_train) * (process.t_start - process.t_end) / (n_train - 1)
    log_ab = process.log_alpha_bar(tau)
    return -np.expm1(np.diff(log_ab, prepend=0.0))


def peer_settings(peers=PEERS) -> list[tuple[str, str]]:
    """(peer, setting) pairs: every spacing for every peer, and the Karras landings where a peer has Karras σ."""
    return [(name, s) for name in peers for s in SPACINGS + (tuple(KARRAS_LANDINGS) if name in KARRAS_PEERS else ())]


def make_peer(name: str, betas: np.ndarray, setting: str = "trailing"):
    """A diffusers scheduler by benchmark name and setting (a spacing, "karras" or "karras-zero"; module doc)."""
    if setting not in SPACINGS and setting not in KARRAS_LANDINGS:
        raise SettingsError(f"unknown setting {setting!r}; choose one of {SPACINGS + tuple(KARRAS_LANDINGS)}")
    karras = setting in KARRAS_LANDINGS
    if karras and name not in KARRAS_PEERS:
        raise SettingsError(f"{name} runs without Karras σ here; Karras settings are for {KARRAS_PEERS}")
    c = {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(),
         "timestep_spacing": "trailing" if karras else setting}
    sigmas = {"use_karras_sigmas": karras, "final_sigmas_type": KARRAS_LANDINGS.get(setting, "sigma_min")}
    if name == "ddim":
        return diffusers.DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=False)
    if name.startswith("deis-"):
        return diffusers.DEISMultistepScheduler(**c, solver_order=int(name[-1]))
    if name.startswith("dpm++"):
        return diffusers.DPMSolverMultistepScheduler(**c, **sigmas, algorithm_type="dpmsolver++",
                                                     solver_order=int(name[-2]))
    if name.startswith("unipc-"):
        return diffusers.UniPCMultistepScheduler(**c, **sigmas, solver_order=int(name[-1]))
    raise SettingsError(f"unknown peer {name!r}; choose one of {PEERS}")


def peer_times(scheduler, process: VP) -> np.ndarray:
    """Time of the noise level each step's update assumes, then of the landing (after set_timesteps)."""
    if hasattr(scheduler, "sigmas"):  # DPM-Solver, UniPC, DEIS: σ_k in float32, σ = 0 is ᾱ = 1 (t = 0)
        alpha_bar = 1.0 / (1.0 + scheduler.sigmas.double().numpy() ** 2)
    else:  # DDIM: ᾱ at the timestep, then the final ᾱ
        ab = scheduler.alphas_cumprod.double().numpy()
        alpha_bar = np.append(ab[scheduler.timesteps.numpy()], float(scheduler.final_alpha_cumprod))
    # ᾱ = 1 is t = 0 exactly (bisection would stop a hair above it)
    return np.where(alpha_bar == 1.0, 0.0, time_of_alpha_bar(process, alpha_bar, T_MAX))


def run_peer(scheduler, process: VP, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int) -> PeerRun:
    """Sample with a diffusers scheduler; call k gets the exact ε at the time of the peer's own level k."""
    scheduler.set_timesteps(nfe)
    times = peer_times(scheduler, process)
    if len(times) != len(scheduler.timesteps) + 1:
        raise RuntimeError(f"{type(scheduler).__name__} has {len(times)} levels for {len(scheduler.timesteps)} steps")
    calls = []

    def model(x):
        t = float(times[len(calls)])
        calls.append(t)
        return eps_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    x = u_T * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, step)), step, x).prev_sample
    ab = scheduler.alphas_cumprod.double().numpy()[scheduler.timesteps.numpy()]
    return PeerRun(x, times, time_of_alpha_bar(process, ab, T_MAX), len(calls))


class DiffusersVP:
    """The peer family (gddim.bench.peers.PeerFamily) of diffusers' schedulers on a VP process (module doc)."""

    library = "diffusers"

    def __init__(self, process: VP | None = None, peers=PEERS, n_train: int = N_TRAIN):
        self.process = VP() if process is None else process
        self.peers, self.betas = tuple(peers), peer_betas(self.process, n_train)

    def settings(self) -> list[tuple[str, str]]:
        return peer_settings(self.peers)

    def run(self, peer: str, setting: str, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int) -> PeerRun:
        return run_peer(make_peer(peer, self.betas, setting), self.process, eps_fn, u_T, nfe)

    def shared_times(self, nfe: int) -> np.ndarray:
        """The trailing peers' call and landing times (DDIM's, which every trailing peer shares)."""
        ddim = make_peer("ddim", self.betas)
        ddim.set_timesteps(nfe)
        return peer_times(ddim, self.process)

    def levels(self, times: np.ndarray) -> dict:
        ab = np.exp(self.process.log_alpha_bar(np.asarray(times, dtype=np.float64)))
        return {"alpha_bar_first_call": float(ab[0]), "alpha_bar_last_call": float(ab[-2]),
                "alpha_bar_final": float(ab[-1])}

    def gaps(self, run: PeerRun, shared: np.ndarray) -> dict:
        """A peer's levels against gDDIM's trailing grid (calls only), and its σ_k against its integer timesteps."""
        calls = self._log_snr(run.times[:-1])
        return {"max_log_snr_gap_calls_to_trailing_grid": float(np.abs(calls - self._log_snr(shared[:-1])).max()),
                "max_time_gap_calls_to_trailing_grid": float(np.abs(run.times[:-1] - shared[:-1]).max()),
                "max_log_snr_gap_level_vs_timestep": float(np.abs(calls - self._log_snr(run.timestep_times)).max()),
                "last_step_is_identity": bool(abs(run.times[-1] - run.times[-2]) <= 1e-12)}

    def _log_snr(self, t) -> np.ndarray:
        return self.process.log_snr(np.asarray(t, dtype=np.float64))

    def data_prediction(self, eps_fn: EpsFn, x: torch.Tensor, t: float) -> torch.Tensor:
        """E[x_0 | x_t] = (x - √(1-ᾱ) ε) / √ᾱ."""
        ab = float(np.exp(self.process.log_alpha_bar(t)[0]))
        eps = eps_fn(x, torch.full((len(x),), t, dtype=x.dtype))
        return (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)

    def description(self) -> dict:
        return {"peers": list(self.peers), "n_train_peers": len(self.betas), "peer_precision": PRECISION,
                "versions": {"diffusers": diffusers.__version__}}
