"""One sampler setting written as one string: the spelling of the command line, evaluation, benchmarks and result files.

    method[:q=N][:lam=X][:param=R|L][:pred=data|eps][:corr=0|1][:interp=t|sqrt_t|logsnr][:lof=0|1][:final=data]

e.g. "gddim" (the default sampler), "gddim:q=2" (the paper's q = 2), "gddim:q=3:pred=data:corr=1" or "em".
Options left out take gddim.sample's defaults. `SamplerSpec.parse(text)` reads it and `str(spec)` (= `spec.label`)
writes its canonical form: keys in the order above, λ as %g, flags as 0/1, param=R left out. Every result
file stores that form in its "sampler" field (evaluation: "label"), so files join on it.
This module imports nothing heavy: the command line parses specs without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SettingsError

METHODS = ("gddim", "euler", "em", "ancestral", "sscs")
SPEC_KEYS = {"q": "order", "lam": "lam", "param": "parameterization", "pred": "prediction", "corr": "corrector",
             "interp": "interpolation", "lof": "lower_order_final", "final": "final_step"}
SPEC_FORM = "method[:q=N][:lam=X][:param=R|L][:pred=data|eps][:corr=0|1][:interp=t|sqrt_t|logsnr][:lof=0|1][:final=data]"
FLAGS = {"0": False, "1": True}
NUMBERS = {"order": int, "lam": float}


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting (module doc); `options()` are the keyword arguments of gddim.sample."""

    method: str = "gddim"
    order: int | None = None
    lam: float | None = None
    parameterization: str = "R"
    prediction: str | None = None
    corrector: bool | None = None
    interpolation: str | None = None
    lower_order_final: bool | None = None
    final_step: str | None = None

    @classmethod
    def parse(cls, text: str) -> SamplerSpec:
        """The spec a string names; a SettingsError says what is wrong and how the form reads."""
        method, *parts = text.strip().split(":")
        if method not in METHODS:
            raise SettingsError(f"unknown sampler method {method!r} in {text!r}; choose one of {', '.join(METHODS)}")
        values: dict = {}
        for part in parts:
            key, eq, value = part.partition("=")
            if not eq or key not in SPEC_KEYS or not value or SPEC_KEYS[key] in values:
                raise SettingsError(f"bad sampler option {part!r} in {text!r}; write {SPEC_FORM} (each key once), "
                                    "e.g. gddim:q=2 or gddim:lam=0.5")
            values[SPEC_KEYS[key]] = value
        return cls(method, **{name: _value(name, value, text) for name, value in values.items()})

    @property
    def label(self) -> str:
        """The canonical spelling: only what was set (parse(label) gives the spec back)."""
        parts = [self.method]
        for key, name in SPEC_KEYS.items():
            value = getattr(self, name)
            if value is None or (name == "parameterization" and value == "R"):
                continue
            if isinstance(value, bool):
                value = int(value)  # flags are written 0 / 1
            elif name == "lam":
                value = format(value, "g")
            parts.append(f"{key}={value}")
        return ":".join(parts)

    def __str__(self) -> str:
        return self.label

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise (λ > 0; em, sscs and ancestral at their λ = 1 unless told otherwise)."""
        if self.lam is not None:
            return self.lam > 0
        return self.method in ("em", "sscs", "ancestral")

    def options(self) -> dict:
        """Keyword arguments of gddim.sample; unset options are left out so that sample's defaults apply."""
        chosen = {name: getattr(self, name) for name in SPEC_KEYS.values()}
        return {"method": self.method, **{k: v for k, v in chosen.items() if v is not None}}


def _value(name: str, text: str, spec: str):
    """One option's value from its text: numbers and 0/1 flags converted, words kept as written."""
    if name in NUMBERS:
        try:
            return NUMBERS[name](text)
        except ValueError:
            raise SettingsError(f"bad number {text!r} for {name} in sampler spec {spec!r}") from None
    if name in ("corrector", "lower_order_final"):
        if text not in FLAGS:
            raise SettingsError(f"{name} in {spec!r} must be 0 or 1, got {text!r}")
        return FLAGS[text]
    return text

