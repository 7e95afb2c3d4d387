"""The probing engine: sufficient statistics, the estimator, data, sweeps, controls, positions.

``belief_lens.probes`` is the public face; import from there.
"""
