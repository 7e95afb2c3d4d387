"""belief_lens: belief-state geometry in transformer residual streams, for TransformerLens.

The top level holds the comp-mech core (no TransformerLens import). Model access, probes,
interventions, plots and the report live in their modules: ``belief_lens.models``,
``belief_lens.activations``, ``belief_lens.training``, ``belief_lens.probes``,
``belief_lens.interventions``, ``belief_lens.plotting``, ``belief_lens.report``.
"""

from belief_lens.beliefs import belief_states, enumerate_sequences, log_probs, sample_sequences
from belief_lens.compmech import mixed_state_presentation, myopic_entropy, optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.processes import make_process
from belief_lens.version import __version__

__all__ = [
    "__version__",
    "HMM",
    "BeliefLensError",
    "GeneralizedHMM",
    "belief_states",
    "enumerate_sequences",
    "log_probs",
    "make_process",
    "mixed_state_presentation",
    "myopic_entropy",
    "optimal_loss",
    "sample_sequences",
]
