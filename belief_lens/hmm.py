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

from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.validation import check_float, check_int, check_real_tensor

_EIG_TOL = 1e-8
#: A conditional word probability below ``-NEGATIVE_TOL`` makes a generalized HMM invalid; above
#: it, round-off from cancelling signed entries (about 1e-17) is read as zero.
NEGATIVE_TOL = 1e-10
#: Word length up to which a GeneralizedHMM's word probabilities are checked when it is built.
DEFAULT_CHECK_DEPTH = 6


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
        T = check_real_tensor("transition_matrices", transition_matrices).clone()
        if name is not None and not isinstance(name, str):
            raise BeliefLensError(f"name must be a string or None, got {type(name).__name__}")
        atol = check_float("atol", atol, low=0.0, low_open=True)
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
            self.initial_state = self.check_belief(initial_state, "initial_state")

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

    def check_belief(self, belief, what: str = "belief") -> Tensor:
        """Validate one belief (shape, finiteness, ``eta @ tau = 1``) and return it normalised."""
        b = check_real_tensor(what, belief)
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
        beliefs = check_real_tensor("beliefs", beliefs)
        if not torch.isfinite(beliefs).all():
            raise BeliefLensError("beliefs contain NaN or inf")
        if beliefs.ndim < 1 or beliefs.shape[-1] != self.n_states:
            raise BeliefLensError(
                f"beliefs must end in n_states={self.n_states}, got shape {tuple(beliefs.shape)}"
            )
        return beliefs @ self.T_tau.T

    def update(
        self, beliefs: Float[Tensor, "*batch n_states"], tokens: Int[Tensor, "*batch"]
    ) -> Float[Tensor, "*batch n_states"]:
        """Bayes-update beliefs on one observed token each; raises if a token is impossible."""
        beliefs = check_real_tensor("beliefs", beliefs)
        if not torch.isfinite(beliefs).all():
            raise BeliefLensError("beliefs contain NaN or inf")
        tokens = self.check_tokens(tokens)
        if beliefs.shape[:-1] != tokens.shape or beliefs.shape[-1] != self.n_states:
            raise BeliefLensError(
                f"beliefs {tuple(beliefs.shape)} must be tokens {tuple(tokens.shape)} + "
                f"({self.n_states},)"
            )
        new, norm = self.step(beliefs.reshape(-1, self.n_states).T, tokens.reshape(-1))
        new, norm = new.T.reshape(beliefs.shape), norm.reshape(tokens.shape)
        if (norm < -NEGATIVE_TOL).any():
            idx = torch.nonzero(norm < -NEGATIVE_TOL)[0].tolist()
            raise InvalidProcessError(
                f"token at batch index {idx} has negative probability "
                f"{norm[tuple(idx)].item():.6g}: {self.name} is not a valid process from there"
            )
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
        tokens = check_real_tensor("tokens", tokens, integer=True)
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
    eigenvalue in modulus, scaled so that its largest entry (in modulus) is 1; word probabilities
    are ``initial_state @ T[w1] ... T[wL] @ tau``. A non-ergodic ``T.sum(0)`` (eigenvalue 1
    repeated, as in a mixture) needs ``tau=`` given.

    A presentation is a valid process only if no word has negative probability. Construction
    checks every word up to ``check_depth`` tokens from ``initial_state`` (default
    :data:`DEFAULT_CHECK_DEPTH`, enough for the enumerations in the tests and demos) and raises
    naming the first negative word; distinct beliefs are merged, so the cost is the number of
    distinct beliefs, and the check stops early (``checked_depth`` says where) once a level
    exceeds ``2**18`` of them. Enumeration, sampling and filtering raise on any negative word
    probability they meet beyond that depth.

    simplexity scales ``tau`` so that its entries sum to ``n_states`` (here its largest entry is
    1); both normalise beliefs by ``eta @ tau = 1``, so the beliefs differ by one scalar:
    ``eta_simplexity = eta * tau.sum() / n_states`` and ``eta = eta_simplexity * n_states /
    tau.sum()``. Next-token and word probabilities are the same. For an HMM (``tau`` all ones)
    the two agree.
    """

    generalized = True

    def __init__(
        self,
        transition_matrices: Tensor | list,
        initial_state: Tensor | list | None = None,
        *,
        atol: float = 1e-8,
        name: str | None = None,
        tau: Tensor | list | None = None,
        check_depth: int | None = None,
    ) -> None:
        self._given_tau = None if tau is None else check_real_tensor("tau", tau)
        depth = DEFAULT_CHECK_DEPTH if check_depth is None else check_depth
        depth = check_int("check_depth", depth, low=0)
        super().__init__(transition_matrices, initial_state, atol=atol, name=name)
        self.checked_depth = self._check_words(depth)

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
        if self._given_tau is not None:
            tau = self._given_tau
            if tau.shape != (self.n_states,):
                raise BeliefLensError(
                    f"tau must have shape ({self.n_states},), got {tuple(tau.shape)}"
                )
            if not torch.isfinite(tau).all() or tau.abs().max() == 0:
                raise BeliefLensError("tau must be finite and nonzero")
            if not torch.allclose(M @ tau, tau, atol=1e-8):
                raise BeliefLensError(
                    "tau must be a right eigenvector of T.sum(0) with eigenvalue 1; "
                    f"max |T.sum(0) @ tau - tau| = {(M @ tau - tau).abs().max().item():.3g}"
                )
            return tau / tau[tau.abs().argmax()]
        vals, vecs = torch.linalg.eig(M)
        k = int((vals - 1).abs().argmin())
        if ((vals - 1).abs() < 1e-6).sum() != 1:
            raise BeliefLensError(
                "T.sum(0) has a repeated eigenvalue 1 (a non-ergodic presentation): tau is not "
                "unique; pass tau= (for a mixture, the stacked components' tau)"
            )
        tau = vecs[:, k].real
        tau = tau / tau[tau.abs().argmax()]
        if not torch.allclose(M @ tau, tau, atol=1e-8):
            raise BeliefLensError("could not find the right eigenvector tau of T.sum(0)")
        return tau

    def _check_words(self, depth: int, max_beliefs: int = 2**18) -> int:
        """Raise on the first word (up to ``depth`` tokens) with negative probability.

        Returns the depth actually checked (less than ``depth`` only when the number of distinct
        beliefs passed ``max_beliefs``).
        """
        S = self.n_states
        eta = self.initial_state[None]
        words = torch.empty(1, 0, dtype=torch.long)
        prob = torch.ones(1, dtype=torch.float64)
        for d in range(depth):
            if len(eta) * self.n_symbols > max_beliefs:
                return d
            new = torch.einsum("ks,xsj->kxj", eta, self.T)
            p = new @ self.tau  # [K, V]
            neg = p < -NEGATIVE_TOL
            if neg.any():
                k, x = torch.nonzero(neg)[0].tolist()
                word = words[k].tolist() + [x]
                raise InvalidProcessError(
                    f"{self.name} is not a valid process: word {word} has negative probability "
                    f"{(prob[k] * p[k, x]).item():.6g} (P({x} | {words[k].tolist()}) = "
                    f"{p[k, x].item():.6g}); its word probabilities must be >= 0"
                )
            k, x = torch.nonzero(p > 1e-12, as_tuple=True)
            eta = new[k, x] / p[k, x, None]
            prob = prob[k] * p[k, x]
            words = torch.cat([words[k], x[:, None]], dim=1)
            keys = torch.round(eta / 1e-9).to(torch.int64)
            _, inverse = torch.unique(keys, dim=0, return_inverse=True)
            first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(eta))
            first = first.scatter_reduce(0, inverse, torch.arange(len(eta)), reduce="amin")
            eta, words, prob = eta[first], words[first], prob[first]
            if S == 0 or len(eta) == 0:
                return depth
        return depth
