"""The one exception type belief_lens raises for bad input."""


class BeliefLensError(ValueError):
    """Bad input to a belief_lens function: the message names what was expected and what came."""
