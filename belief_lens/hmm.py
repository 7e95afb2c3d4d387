"""Edge-emitting hidden Markov models and their generalized (signed) relatives.

Convention, used everywhere in belief_lens: ``T[x, i, j] = P(emit x, go to j | in i)``, a float64
tensor of shape ``[n_symbols, n_states, n_states]``. Beliefs are row vectors over hidden states,
updated by ``eta' = eta @ T[x] / (eta @ T[x] @ tau)``; the next-token distribution is
``P(x | eta) = eta @ T[x] @ tau``. For an HMM ``tau`` is the all-ones vector; for a generalized
HMM (entries may be negative) it is the right eigenvector of ``T.sum(0)`` with eigenvalue 1.
"""

from __future__ import annotations

from functools import cached_property

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError

_EIG_TOL = 1e-8


class HMM:
    """An edge-emitting (Mealy) hidden Markov model with float64 transition tensors.

    Args:
        transition_matrices: ``T[x, i, j] = P(emit x, go to j | in i)``, ``[n_symbols, S, S]``.
        initial_state: the belief sequences start from; defaults to the stationary distribution,
            which must then be unique.
        atol: tolerance for the row-sum and eigenvalue checks.
        name: a label used in reports.

    >>> hmm = HMM([[[0.5, 0.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])  # golden mean
    >>> hmm.stationary_distribution.tolist()
    [0.666..., 0.333...]
    """

    generalized: bool = False

    def __init__(
        self,
        transition_matrices: Tensor | list,
        initial_state: Tensor | list | None = None,
        *,
        atol: float = 1e-8,
        name: str | None = None,
    ) -> None:
        T = torch.as_tensor(transition_matrices, dtype=torch.float64).clone()
        if T.ndim != 3 or T.shape[1] != T.shape[2] or T.shape[0] < 1 or T.shape[1] < 1:
            raise BeliefLensError(
                "transition_matrices must have shape [n_symbols, n_states, n_states] "
                f"(T[x, i, j] = P(emit x, go to j | in i)); got shape {tuple(T.shape)}"
            )
        if not torch.isfinite(T).all():
            bad = torch.nonzero(~torch.isfinite(T))[0].tolist()
            raise BeliefLensError(f"transition_matrices contain NaN or inf, first at T{bad}")
        self.atol = atol
        self.T: Float[Tensor, "n_symbols n_states n_states"] = T
        self.name = name or type(self).__name__
        self._validate()
        if initial_state is None:
            self.initial_state = self.stationary_distribution
        else:
            self.initial_state = self._check_belief(initial_state, "initial_state")

    # ----------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        T = self.T
        if (T < 0).any():
            x, i, j = torch.nonzero(T < 0)[0].tolist()
            raise BeliefLensError(
                f"negative transition probability T[{x}, {i}, {j}] = {T[x, i, j].item():.6g}; "
                "use GeneralizedHMM for signed presentations"
            )
        row_sums = T.sum(dim=(0, 2))
        bad = torch.nonzero((row_sums - 1).abs() > self.atol).flatten()
        if len(bad):
            s = bad[0].item()
            raise BeliefLensError(
                f"state {s} has outgoing probability {row_sums[s].item():.10g}, expected 1: "
                "rows of T.sum(0) must sum to 1 (no silent renormalising)"
            )

    def _check_belief(self, belief, what: str) -> Tensor:
        b = torch.as_tensor(belief, dtype=torch.float64)
        if b.shape != (self.n_states,):
            raise BeliefLensError(
                f"{what} must have shape ({self.n_states},), got {tuple(b.shape)}"
            )
        if not torch.isfinite(b).all():
            raise BeliefLensError(f"{what} contains NaN or inf")
        norm = b @ self.tau
        if not self.generalized and (b < 0).any():
            raise BeliefLensError(f"{what} has negative entries: {b.tolist()}")
        if (norm - 1).abs() > 1e-6:
            raise BeliefLensError(
                f"{what} must be normalised (eta @ tau = 1), got {norm.item():.6g}"
            )
        return b / norm

    # ----------------------------------------------------------------------------- structure
    @property
    def n_symbols(self) -> int:
        return self.T.shape[0]

    @property
    def n_states(self) -> int:
        return self.T.shape[1]

    @cached_property
    def transition_matrix(self) -> Float[Tensor, "n_states n_states"]:
        """The symbol-marginal state transition matrix ``T.sum(0)``."""
        return self.T.sum(0)

    @cached_property
    def tau(self) -> Float[Tensor, " n_states"]:
        """The right normalising vector: all ones for an HMM."""
        return torch.ones(self.n_states, dtype=torch.float64)

    @cached_property
    def T_tau(self) -> Float[Tensor, "n_symbols n_states"]:
        """``T[x] @ tau`` for every symbol: ``P(x | eta) = eta @ T_tau[x]``."""
        return self.T @ self.tau

    @cached_property
    def stationary_distribution(self) -> Float[Tensor, " n_states"]:
        """The unique left eigenvector of ``T.sum(0)`` with eigenvalue 1, normalised by ``tau``."""
        M = self.transition_matrix
        eig = torch.linalg.eigvals(M)
        n_unit = int(((eig - 1).abs() < 1e-6).sum())
        if n_unit != 1:
            raise BeliefLensError(
                f"{self.name} has {n_unit} eigenvalues equal to 1 in T.sum(0), so no unique "
                "stationary distribution (the process is not ergodic); pass initial_state="
            )
        S = self.n_states
        A = torch.cat([M.T - torch.eye(S, dtype=M.dtype), self.tau[None, :]], dim=0)
        b = torch.zeros(S + 1, dtype=M.dtype)
        b[-1] = 1.0
        pi = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
        if not self.generalized:
            pi = pi.clamp_min(0.0)
        return pi / (pi @ self.tau)

    @cached_property
    def is_unifilar(self) -> bool:
        """Whether each (state, symbol) has at most one successor state."""
        return bool(((self.T.abs() > 0).sum(-1) <= 1).all())

    # ----------------------------------------------------------------------------- dynamics
    def next_token_probs(
        self, beliefs: Float[Tensor, "*batch n_states"]
    ) -> Float[Tensor, "*batch n_symbols"]:
        """``P(x | eta) = eta @ T[x] @ tau`` for every symbol ``x``."""
        beliefs = torch.as_tensor(beliefs, dtype=torch.float64)
        if beliefs.shape[-1] != self.n_states:
            raise BeliefLensError(
                f"beliefs must end in n_states={self.n_states}, got shape {tuple(beliefs.shape)}"
            )
        return beliefs @ self.T_tau.T

    def update(
        self, beliefs: Float[Tensor, "*batch n_states"], tokens: Int[Tensor, "*batch"]
    ) -> Float[Tensor, "*batch n_states"]:
        """Bayes-update beliefs on one observed token each; raises if a token is impossible."""
        beliefs = torch.as_tensor(beliefs, dtype=torch.float64)
        tokens = self.check_tokens(tokens)
        if beliefs.shape[:-1] != tokens.shape or beliefs.shape[-1] != self.n_states:
            raise BeliefLensError(
                f"beliefs {tuple(beliefs.shape)} must be tokens {tuple(tokens.shape)} + "
                f"({self.n_states},)"
            )
        new, norm = self.step(beliefs.reshape(-1, self.n_states).T, tokens.reshape(-1))
        new, norm = new.T.reshape(beliefs.shape), norm.reshape(tokens.shape)
        if (norm <= 0).any():
            idx = torch.nonzero(norm <= 0)[0].tolist()
            raise BeliefLensError(
                f"token at batch index {idx} has probability zero under its belief"
            )
        return new / norm.unsqueeze(-1)

    @cached_property
    def _T_cols(self) -> Float[Tensor, "n_symbols_x_n_states_plus_1 n_states"]:
        """Per symbol, ``T[x].T`` and then ``T[x] @ tau`` as rows: one matmul gives every
        symbol's update and normaliser at once."""
        rows = torch.cat([self.T.transpose(1, 2), self.T_tau[:, None, :]], dim=1)
        return rows.reshape(-1, self.n_states).contiguous()

    def step(
        self, beliefs: Float[Tensor, "n_states n"], tokens: Int[Tensor, " n"]
    ) -> tuple[Float[Tensor, "n_states n"], Float[Tensor, " n"]]:
        """Unnormalised update and its normaliser ``P(x | eta)``, unchecked: the hot loops' step.

        Beliefs are columns (``[n_states, n]``): skinny matmuls and gathers are several times
        faster in this layout than with one belief per row.
        """
        S, n = beliefs.shape
        if self.n_symbols <= 4 * S:
            every = (self._T_cols @ beliefs).view(self.n_symbols, S + 1, n)
            out = torch.gather(every, 0, tokens.view(1, 1, n).expand(1, S + 1, n))[0]
            return out[:S], out[S]
        new = torch.einsum("sn,nsj->jn", beliefs, self.T[tokens])
        return new, self.tau @ new

    def check_tokens(self, tokens) -> Tensor:
        """Return tokens as a LongTensor, raising if any is outside ``[0, n_symbols)``."""
        tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise BeliefLensError(f"tokens must be integers, got dtype {tokens.dtype}")
        tokens = tokens.long()
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.n_symbols):
            bad = torch.nonzero((tokens < 0) | (tokens >= self.n_symbols))[0].tolist()
            raise BeliefLensError(
                f"token {tokens[tuple(bad)].item()} at index {bad} is out of range for "
                f"{self.n_symbols} symbols"
            )
        return tokens

    def __repr__(self) -> str:
        cls = type(self).__name__
        return f"{cls}(name={self.name!r}, n_states={self.n_states}, n_symbols={self.n_symbols})"


class GeneralizedHMM(HMM):
    """A generalized HMM: ``T`` may have negative entries and normalises with ``tau``.

    ``tau`` is the right eigenvector of ``T.sum(0)`` with eigenvalue 1, which must be its largest
    eigenvalue in modulus; word probabilities are ``pi @ T[w1] ... T[wL] @ tau``.
    """

    generalized = True

    def _validate(self) -> None:
        eig = torch.linalg.eigvals(self.transition_matrix)
        radius = eig.abs().max().item()
        if not ((eig - 1).abs() < 1e-6).any() or radius > 1 + 1e-6:
            raise BeliefLensError(
                f"T.sum(0) must have 1 as its largest eigenvalue; spectral radius is {radius:.6g} "
                "(rescale T by it explicitly)"
            )
        _ = self.tau

    @cached_property
    def tau(self) -> Float[Tensor, " n_states"]:
        M = self.transition_matrix
        S = self.n_states
        vals, vecs = torch.linalg.eig(M)
        k = int((vals - 1).abs().argmin())
        if ((vals - 1).abs() < 1e-6).sum() != 1:
            raise BeliefLensError("T.sum(0) has a repeated eigenvalue 1: tau is not unique")
        tau = vecs[:, k].real
        tau = tau / tau[tau.abs().argmax()]
        if not torch.allclose(M @ tau, tau, atol=1e-8) or tau.abs().max() == 0 or S == 0:
            raise BeliefLensError("could not find the right eigenvector tau of T.sum(0)")
        return tau
