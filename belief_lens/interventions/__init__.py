"""Causal interventions along belief directions, as values, each checked against theory.

Probing shows the belief geometry is present; interventions show the model uses it.

============================  ===============================================================
module                        holds
============================  ===============================================================
``interventions.values``      ``Steer``, ``SubspacePatch``, ``Ablate`` (TransformerLens hook
                              functions with a ``.hook``), their base, save and
                              ``load_intervention``
``interventions.bases``       ``belief_basis``, ``control_basis``, per-layer bases, the probe's
                              read-out, the subspace projection
``interventions.run``         ``intervene``, ``steer_to_belief``, ``ablate_belief_subspace``:
                              running a model with an intervention
``interventions.patching``    ``subspace_patch_setter``, ``theory_kl_metric``,
                              ``recovery_metric``, ``patch_belief_subspace``,
                              ``patching_report`` and its ``PatchingResult``
``interventions.steering``    ``intervention_report`` and its ``InterventionReport``
``interventions.checks``      checks only interventions need (bases, simplex, activations)
============================  ===============================================================

``intervene(model, tokens, intervention)`` applies any intervention through the model's own
``hooks()`` context manager and returns logits; every intervention is also a TransformerLens hook
function: ``model.run_with_hooks(tokens, fwd_hooks=[(iv.hook, iv)])``. Every intervention has
``.control(seed)``: the same intervention on a seeded random subspace of the same rank, orthogonal
to the belief subspace (so the same norm): an effect is evidence only beside its control.

Everything takes any model exposing the TransformerLens hook API (``HookedTransformer`` or
``TransformerBridge``), runs it in eval mode without gradients, and leaves no hook behind even
when a run raises.
"""

from __future__ import annotations

from belief_lens.interventions.bases import belief_basis, control_basis
from belief_lens.interventions.checks import SIMPLEX_ATOL
from belief_lens.interventions.patching import (
    PatchingResult,
    Reduction,
    patch_belief_subspace,
    patching_report,
    recovery_metric,
    subspace_patch_setter,
    theory_kl_metric,
)
from belief_lens.interventions.provenance import (
    check_provenance,
    current_fingerprint,
    provenance_of,
)
from belief_lens.interventions.run import (
    Directions,
    ablate_belief_subspace,
    intervene,
    steer_to_belief,
    steerable_hooks,
)
from belief_lens.interventions.steering import Current, InterventionReport, intervention_report
from belief_lens.interventions.values import (
    Ablate,
    AblateMode,
    Intervention,
    Steer,
    SubspacePatch,
    load_intervention,
)
from belief_lens.validation import Positions

__all__ = [
    "SIMPLEX_ATOL",
    "Ablate",
    "AblateMode",
    "Current",
    "Directions",
    "Intervention",
    "InterventionReport",
    "PatchingResult",
    "Positions",
    "Reduction",
    "Steer",
    "SubspacePatch",
    "ablate_belief_subspace",
    "belief_basis",
    "check_provenance",
    "control_basis",
    "current_fingerprint",
    "intervene",
    "provenance_of",
    "intervention_report",
    "load_intervention",
    "patch_belief_subspace",
    "patching_report",
    "recovery_metric",
    "steer_to_belief",
    "steerable_hooks",
    "subspace_patch_setter",
    "theory_kl_metric",
]
