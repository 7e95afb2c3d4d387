"""The one exception type belief_lens raises for bad input."""


class BeliefLensError(ValueError):
    """Bad input to a belief_lens function: the message names what was expected and what came."""


class InvalidProcessError(BeliefLensError):
    """A generalized HMM gave a word negative probability: it is not a valid process at all.

    Callers that fall back on another method when a computation is too large (sampling instead
    of enumerating) must let this one through: no method makes an invalid process valid.
    """


class ProvenanceWarning(UserWarning):
    """A probe or intervention made from one model is used on another (different fingerprints).

    Researchers who transfer on purpose pass ``allow_other_model=True``; ``strict=True`` makes it
    an error.
    """
