"""Reading attention from any TransformerLens model, per layer and head: attention by distance
from every query position, its fitted log-slope with a standard error, each past token's
contribution (attention times its OV output) in belief coordinates through the layer's probe, the
OV output of each token and the token embeddings in the same coordinates, and their comparison
with :mod:`belief_lens.attention.theory`.

A contribution counts only the token-dependent part of the OV output: at each source position the
output's mean over sequences is subtracted before its norm is taken. The theory's term
``lam^n delta_x`` has zero mean over tokens (the mean goes into ``pi``); a head's positional value
vectors write the same thing whatever the token, carry no belief, and, uncentred, can dominate
the norm where the corrections are small (Mess3 with ``alpha`` near 1/3).

Hooks are TransformerLens names: ``blocks.{L}.attn.hook_pattern`` ``[n, head, q, k]`` and
``blocks.{L}.attn.hook_v`` ``[n, k, head, d_head]``; the output matrix ``W_O`` comes from
:func:`belief_lens.tl_compat.attention_output_weights`. A probe maps ``d_model`` to beliefs; its
linear part (``coef_``) carries a head's additive write into belief coordinates, exactly so for
a probe read where the head writes (``blocks.{L}.hook_resid_mid``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.activations import check_tokens, require_eval_mode
from belief_lens.attention.theory import AttentionTheory
from belief_lens.errors import BeliefLensError
from belief_lens.probes import AffineProbe
from belief_lens.tl_compat import attention_output_weights, embedding_weights
from belief_lens.validation import check_int, check_option

__all__ = [
    "AttentionComparison",
    "Profile",
    "HeadMeasurement",
    "LayerMeasurement",
    "SlopeFit",
    "compare_to_theory",
    "fit_log_slope",
    "measure_attention",
]

#: The two by-distance profiles a head has: its attention, and each past token's contribution.
Profile = Literal["attention", "contribution"]


@dataclass(frozen=True)
class SlopeFit:
    """A log-slope per step of distance, fitted by least squares over every query position with
    one intercept per query (softmax normalises each query's row, so only the slope is shared).
    ``se`` is its ordinary least-squares standard error; ``r2_predicted``, where a prediction was
    given, the share of the within-query variance of the logs that the predicted slope explains."""

    slope: float
    se: float
    n_points: int
    min_distance: int
    r2_predicted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slope": self.slope,
            "se": self.se,
            "n_points": self.n_points,
            "min_distance": self.min_distance,
            "r2_predicted": self.r2_predicted,
        }


def fit_log_slope(
    values: Float[Tensor, "q k"], min_distance: int = 1, predicted: float | None = None
) -> SlopeFit:
    """Fit ``log values[q, q - n] = a_q + slope * n`` over ``n >= min_distance`` and every query
    ``q`` with at least two such entries (lower triangle of a causal pattern)."""
    if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[0] != values.shape[1]:
        raise BeliefLensError(f"values must be a square [q, k] tensor, got {values!r:.80}")
    min_distance = check_int("min_distance", min_distance, low=0)
    xs, ys = [], []
    for q in range(values.shape[0]):
        n = torch.arange(min_distance, q + 1)
        if len(n) < 2:
            continue
        v = values[q, q - n].double()
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise BeliefLensError(
                f"values at query {q} must be positive and finite to take logs, got {v.tolist()}"
            )
        y = v.log()
        xs.append(n.double() - n.double().mean())
        ys.append(y - y.mean())
    if not xs:
        raise BeliefLensError(
            f"no query has two distances >= {min_distance} in a {values.shape[0]}-position pattern"
        )
    x, y = torch.cat(xs), torch.cat(ys)
    sxx = float((x * x).sum())
    slope = float((x * y).sum()) / sxx
    dof = len(x) - len(xs) - 1
    if dof <= 0:
        raise BeliefLensError(
            f"{len(x)} points in {len(xs)} queries leave no degree of freedom for a standard error"
        )
    se = math.sqrt(float(((y - slope * x) ** 2).sum()) / dof / sxx)
    r2 = None
    if predicted is not None:
        total = float((y * y).sum())
        r2 = 1.0 - float(((y - predicted * x) ** 2).sum()) / total if total > 0 else float("nan")
    return SlopeFit(slope, se, len(x), min_distance, r2)


@dataclass(frozen=True)
class HeadMeasurement:
    """One head: its mean attention pattern ``[q, k]`` and, with a probe, the mean norm of each
    past token's contribution in belief coordinates ``[q, k]`` (attention times the OV output
    centred on its mean at the source position: the token-dependent part) and each token's mean
    OV output there ``[V, S]`` (uncentred, averaged over source positions)."""

    layer: int
    head: int
    attention: Float[Tensor, "q k"]
    attention_fit: SlopeFit
    contribution: Float[Tensor, "q k"] | None = None
    contribution_fit: SlopeFit | None = None
    ov_vectors: Float[Tensor, "V S"] | None = None

    def by_distance(self, which: Profile = "attention") -> Float[Tensor, " n"]:
        """From the last query position, distance ``n = 0, 1, ...``: ``attention`` or
        ``contribution``."""
        check_option("which", which, Profile)
        m = self.attention if which == "attention" else self.contribution
        if m is None:
            raise BeliefLensError(f"no {which} was measured (give the layer a probe)")
        return m[-1].flip(0)

    def odd_share(self) -> float:
        """The share of the attention at distances >= 1 from the last query that falls on odd
        distances: a head serving a negative eigenvalue's odd (or even) terms sits near 1 (0)."""
        a = self.by_distance("attention")[1:]
        return float(a[0::2].sum() / a.sum())

    def to_dict(self) -> dict[str, Any]:
        out = {
            "layer": self.layer,
            "head": self.head,
            "odd_share": self.odd_share(),
            "attention_from_last": self.by_distance("attention").tolist(),
            "attention_fit": self.attention_fit.to_dict(),
        }
        if self.contribution is not None and self.contribution_fit is not None:
            out["contribution_from_last"] = self.by_distance("contribution").tolist()
            out["contribution_fit"] = self.contribution_fit.to_dict()
        if self.ov_vectors is not None:
            out["ov_vectors"] = self.ov_vectors.tolist()
        return out


@dataclass(frozen=True)
class LayerMeasurement:
    """Every head of one layer, and the token embeddings in the layer probe's coordinates."""

    layer: int
    heads: tuple[HeadMeasurement, ...]
    embeddings: Float[Tensor, "V S"] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "heads": [h.to_dict() for h in self.heads],
            "embeddings": None if self.embeddings is None else self.embeddings.tolist(),
        }


def measure_attention(
    model: Any,
    tokens: Int[Tensor, "n L"],
    layers: Sequence[int] | None = None,
    probes: Mapping[int, AffineProbe] | None = None,
    *,
    min_distance: int = 1,
    batch_size: int = 1024,
    predicted_slope: float | None = None,
) -> tuple[LayerMeasurement, ...]:
    """Measure every head of ``layers`` (default: all) on ``tokens``; a layer with a probe in
    ``probes`` (layer -> ``AffineProbe`` on ``d_model``) also gets contributions, OV vectors and
    embeddings in belief coordinates. ``predicted_slope`` adds each fit's ``r2_predicted``."""
    require_eval_mode(model)
    tokens = check_tokens(model, tokens)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise BeliefLensError(f"layers must lie in 0..{n_layers - 1}, got {bad}")
    probes = dict(probes or {})
    for layer, probe in probes.items():
        if getattr(probe, "n_features_in_", None) != model.cfg.d_model:
            raise BeliefLensError(
                f"the probe of layer {layer} must be a fitted AffineProbe on d_model="
                f"{model.cfg.d_model}, got {probe!r:.80}"
            )
    sums = _accumulate(model, tokens, layers, probes, check_int("batch_size", batch_size, low=1))
    return tuple(
        _layer_result(model, layer, sums[layer], probes.get(layer), min_distance, predicted_slope)
        for layer in layers
    )


def _accumulate(
    model: Any, tokens: Tensor, layers: list[int], probes: dict, batch_size: int
) -> dict[int, dict[str, Tensor]]:
    """Sums over sequences of the pattern, the contribution norms (of the OV output centred on its
    mean at each source position), and the OV outputs per token."""
    V = model.cfg.d_vocab
    names = {f"blocks.{layer}.attn.hook_{kind}" for layer in layers for kind in ("pattern", "v")}
    sums: dict[int, dict[str, Tensor]] = {layer: {} for layer in layers}
    device = next(model.parameters()).device
    means = _position_means(model, tokens, probes, names, batch_size)
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(device)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name in names)
        one_hot = torch.nn.functional.one_hot(batch, V).double()  # [b, k, V]
        for layer in layers:
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # [b, h, q, k]
            s = sums[layer]
            _add(s, "pattern", pattern.sum(0))
            probe = probes.get(layer)
            if probe is None:
                continue
            u = _ov_output(model, cache, layer, probe)  # [b, k, h, S]
            norms = (u - means[layer].to(device)).norm(dim=-1).permute(0, 2, 1)  # [b, h, k]
            _add(s, "contribution", (pattern * norms[:, :, None]).sum(0))
            _add(s, "ov", torch.einsum("bkv,bkhs->hvs", one_hot, u))
            _add(s, "ov_count", one_hot.sum((0, 1)))
    for layer in layers:
        sums[layer]["n"] = torch.tensor(float(len(tokens)))
    return sums


def _ov_output(model: Any, cache: Any, layer: int, probe: AffineProbe) -> Tensor:
    """Each head's output at each source position in belief coordinates ``[b, k, h, S]``: the
    value times ``W_O`` times the probe's linear part."""
    v = cache[f"blocks.{layer}.attn.hook_v"].double()  # [b, k, h, dh]
    W_O = attention_output_weights(model, layer).double().to(v.device)  # [h, dh, m]
    return torch.einsum("bkhd,hdm,sm->bkhs", v, W_O, probe.coef_.double().to(v.device))


def _position_means(
    model: Any, tokens: Tensor, probes: dict, names: set[str], batch_size: int
) -> dict[int, Tensor]:
    """The mean over sequences of each probed layer's OV output ``[k, h, S]``: the
    token-independent part that :func:`_accumulate` removes before taking norms."""
    if not probes:
        return {}
    device = next(model.parameters()).device
    sums: dict[int, Tensor] = {}
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(device)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name in names)
        for layer, probe in probes.items():
            if f"blocks.{layer}.attn.hook_v" in names:
                total = _ov_output(model, cache, layer, probe).sum(0).cpu()
                sums[layer] = total if layer not in sums else sums[layer] + total
    return {layer: total / len(tokens) for layer, total in sums.items()}


def _add(sums: dict[str, Tensor], key: str, value: Tensor) -> None:
    sums[key] = value.cpu() if key not in sums else sums[key] + value.cpu()


def _layer_result(
    model: Any,
    layer: int,
    s: dict[str, Tensor],
    probe: AffineProbe | None,
    min_distance: int,
    predicted: float | None,
) -> LayerMeasurement:
    n = float(s["n"])
    pattern = s["pattern"] / n
    heads = []
    for h in range(pattern.shape[0]):
        fit = fit_log_slope(pattern[h], min_distance, predicted)
        if probe is None:
            heads.append(HeadMeasurement(layer, h, pattern[h], fit))
            continue
        contribution = s["contribution"][h] / n
        counts = s["ov_count"].clamp_min(1)[:, None]
        heads.append(
            HeadMeasurement(
                layer,
                h,
                pattern[h],
                fit,
                contribution,
                fit_log_slope(contribution, min_distance, predicted),
                s["ov"][h] / counts,
            )
        )
    embeddings = None
    if probe is not None:
        embeddings = embedding_weights(model).double().cpu() @ probe.coef_.double().cpu().T
    return LayerMeasurement(layer, tuple(heads), embeddings)


@dataclass(frozen=True)
class AttentionComparison:
    """One head measured against the theory: the attention pattern's log-slope (the quantity the
    paper predicts: "the attention pattern, OV-vectors, and embedding vectors", its abstract; the
    pattern goes as ``lam^(d - s)``) and each past token's contribution's (attention times the
    token-dependent OV output), each with its standard error; their ratios and relative errors to
    ``ln|lam|``; the cosine of each token's OV output and embedding (each centred on its
    ``P(x)``-weighted mean over tokens) with ``delta_x``; and R^2 of the predicted slope."""

    layer: int
    head: int
    slope_predicted: float
    contribution: SlopeFit
    attention: SlopeFit
    ov_cosines: tuple[float, ...]
    embedding_cosines: tuple[float, ...]

    @property
    def slope_ratio(self) -> float:
        """The attention pattern's log-slope over ``ln|lam|``."""
        return self.attention.slope / self.slope_predicted

    @property
    def rel_error(self) -> float:
        """``|attention slope - ln|lam|| / |ln|lam||``: the prediction's error."""
        return abs(self.attention.slope - self.slope_predicted) / abs(self.slope_predicted)

    @property
    def contribution_rel_error(self) -> float:
        return abs(self.contribution.slope - self.slope_predicted) / abs(self.slope_predicted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "head": self.head,
            "attention_slope_predicted": self.slope_predicted,
            "attention_slope_measured": self.attention.slope,
            "attention_slope_measured_se": self.attention.se,
            "attention_slope_raw": self.attention.slope,
            "attention_slope_raw_se": self.attention.se,
            "attention_slope_ratio": self.slope_ratio,
            "attention_slope_rel_error": self.rel_error,
            "contribution_slope_measured": self.contribution.slope,
            "contribution_slope_measured_se": self.contribution.se,
            "contribution_slope_rel_error": self.contribution_rel_error,
            "contribution_r2_predicted": self.contribution.r2_predicted,
            "attention_r2_predicted": self.attention.r2_predicted,
            "ov_cosines": list(self.ov_cosines),
            "ov_cosine_min": min(self.ov_cosines),
            "embedding_cosines": list(self.embedding_cosines),
            "embedding_cosine_min": min(self.embedding_cosines),
        }


def _centred_cosines(measured: Tensor, theory: AttentionTheory) -> tuple[float, ...]:
    p = theory.token_probs.double()
    centred = measured.double() - (p[:, None] * measured.double()).sum(0) / p.sum()
    target = theory.corrections.double()
    norms = centred.norm(dim=-1)
    if bool((norms < 1e-9).any()):
        raise BeliefLensError(
            f"a measured vector is zero after centring (norms {norms.tolist()}): its cosine is "
            "not finite"
        )
    return tuple((centred * target).sum(-1).div(norms * target.norm(dim=-1)).tolist())


def compare_to_theory(
    theory: AttentionTheory, layer: LayerMeasurement, head: int = 0
) -> AttentionComparison:
    """Compare head ``head`` of ``layer`` (measured with a probe) with ``theory``."""
    h = layer.heads[check_int("head", head, low=0, high=len(layer.heads) - 1)]
    if h.contribution_fit is None or h.ov_vectors is None or layer.embeddings is None:
        raise BeliefLensError(
            f"layer {layer.layer} was measured without a probe; compare needs belief coordinates"
        )
    if h.ov_vectors.shape != theory.corrections.shape:
        raise BeliefLensError(
            f"the model's OV vectors are {tuple(h.ov_vectors.shape)} [V, S] but the theory's "
            f"corrections are {tuple(theory.corrections.shape)}: another process?"
        )
    predicted = theory.log_slope
    return AttentionComparison(
        layer.layer,
        h.head,
        predicted,
        _refit(h.contribution, h.contribution_fit, predicted),
        _refit(h.attention, h.attention_fit, predicted),
        _centred_cosines(h.ov_vectors, theory),
        _centred_cosines(layer.embeddings, theory),
    )


def _refit(values: Tensor, fit: SlopeFit, predicted: float) -> SlopeFit:
    if fit.r2_predicted is not None:
        return fit
    return fit_log_slope(values, fit.min_distance, predicted)
