"""The training configuration, and the environment and agent it describes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmm import market, rewards
from jaxmm.devices import PLATFORMS
from jaxmm.env import EnvParams, MarketMakingEnv, RegimeRandomization
from jaxmm.execution import ExecutionEnv, ExecutionParams
from jaxmm.params import FILL_MODELS, NEVER, MarketParams, hawkes_stationary_intensity
from jaxmm.policies import AvellanedaStoikov
from train.networks import ACTIVATIONS, ActorCritic, AgentSpec

__all__ = [
    "ACTION_MODES",
    "FEATURES",
    "MO_OFF",
    "TASKS",
    "PPOConfig",
    "add_config_flag",
    "add_field_flags",
    "agent_spec",
    "check_choices",
    "check_counts",
    "check_ranges",
    "config_from_dict",
    "config_to_dict",
    "execution_env",
    "initial_action",
    "market_env",
    "parse_config_flags",
    "with_hawkes_mean_intensity",
]

FEATURES = (
    "full",
    "no_as_spread",
    "no_volatility",
    "inventory_only",
    "extended",
    "alpha",
    "hawkes",
)
ACTION_MODES = ("depths", "as_skew", "depths_mo")
TASKS = ("market_making", "execution")
MO_OFF = -1.0  # PPOConfig.mo_cost: no market orders


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Everything that defines a training run (saved beside every checkpoint).

    The defaults train the homework agent (``python -m train.ppo``); they were chosen by
    measured final reward on the homework market at phi = 0.01 and 0.1 (see README).

    Environment (``jaxmm.env.MarketMakingEnv`` on the homework market):
        phi: penalty coefficient of the reward (``reward`` decides its form), >= 0.
        reward: ``"inventory_penalty"`` (dPnL - phi q'^2), ``"pnl"`` or ``"variance"``.
        features: observation set of the environment. action_mode: ``"depths"`` or ``"as_skew"``.
    Budget:
        total_timesteps: environment steps per seed (all parallel environments together).
        num_envs: parallel environments per seed. num_steps: rollout length per update.
        stagger_envs: before training, advance environment ``i`` by a random number of steps
            (uniform in ``[0, max_steps_in_episode)``, random actions, not used for learning)
            so that the parallel episodes are spread over the session: without it every
            rollout of a fixed-length task sees one time window of all episodes at once.
    PPO:
        update_epochs, num_minibatches: passes over each rollout and minibatches per pass.
        learning_rate: Adam step size, linearly annealed to 0 if ``anneal_lr``.
        gamma: discount per step (1: the undiscounted episode reward the evaluation reports).
        gae_lambda: GAE's lambda. clip_eps: PPO ratio clip (the value loss is not clipped).
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        max_grad_norm: global gradient-norm clip. reward_scale: rewards are multiplied by this
            for learning (value targets of order 1); reported rewards are unscaled.
        hidden_sizes, activation, init_log_std: the actor-critic MLPs (``train.networks``).
        init_action: the mean action of the fresh policy (``None``: the A-S quote at the start
            of the session, see ``initial_action``); strictly inside the action Box.
        normalize_obs: standardise observations by running statistics (``ObsNorm``, updated
            after every rollout); otherwise they pass unchanged (clipped to [-10, 10]). The
            market's features are already O(1).
        average_window: the deployed policy uses an exponential moving average of the
            parameters over updates whose time constant is this fraction of the updates
            (decay ``polyak = 1 - 1 / (average_window * num_updates)``, bias-corrected as in
            Adam; 0: the last parameters). It averages out the random walk of the last updates.
    Run:
        seed: master seed; seed ``i`` of ``num_seeds`` trains from ``split(key(seed))[i]``.
        num_seeds: independent agents trained in parallel (``vmap``).
        devices: split the seeds over this many devices (``jax.sharding``: the seed axis of the
            training state is sharded over a 1-D mesh; each device trains its seeds, no
            communication); a divisor of ``num_seeds``, or 0 (the default): the largest divisor
            of ``num_seeds`` not above the platform's device count (``train.ppo.seed_devices``;
            a training run records the number it used in its ``config.json``, and on a CPU
            ``python -m train.ppo`` makes one host device per core, see
            ``jaxmm.devices.request_host_devices``). Results agree across device counts to
            float rounding, which training then amplifies: compare runs on the same count.
            platform: ``"cpu"``, ``"gpu"``, ``"tpu"`` or None (JAX's default backend).
        name, out_dir: results go to ``out_dir/name/``.
        num_evals: evaluations (and progress lines) during training, each of
            ``progress_episodes`` episodes of every seed's deterministic policy on fixed keys.
        eval_episodes: episodes of the final comparison (common random numbers).
        eval_seed: the evaluation keys: ``key(eval_seed)`` for the final comparison,
            ``key(eval_seed + 1)`` for the progress evaluations (the same for every run).
        naive_half_spread: depth of the naive symmetric quoter, price units (0.5: the
            homework's "fixed spread = 1.0", as in ``experiments.monte_carlo``).
        vol_switch_step, vol_switch_factor: the market's volatility regime switch (sigma times
            the factor from that step on; default: none), for agents trained on a switch.
        random_regimes: train on randomised volatility regimes instead: every episode draws
            its own switch (``jaxmm.env.RegimeRandomization``): with probability
            ``regime_switch_prob`` the volatility is multiplied at a step uniform in
            ``[regime_step_low, regime_step_high]`` by a factor log-uniform in
            ``[regime_factor_low, regime_factor_high]``. The agent is not told the draw.
            Excludes ``vol_switch_step``. Evaluation stays on the configured market.
        as_gamma: risk aversion of the Avellaneda-Stoikov benchmark (k is the market's), of
            the environment's A-S spread feature and of its ``as_skew`` action mode.
        fill_shape, fill_shape_alpha: the market's fill-probability shape
            (``MarketParams.fill_shape``: ``"exponential"``, ``"power"`` with
            ``fill_shape_alpha > 1``, ``"linear"``; the alpha is ignored by the other shapes).
            The optimum, A-S and every evaluation use the same shaped market.
        fill_model: the per-step fill probability (``MarketParams.fill_model``): ``"linear"``
            ``min(1, lambda dt)`` (the homework's) or ``"exponential"`` ``1 - exp(-lambda dt)``
            (the exact Poisson clock).
    Task:
        task: ``"market_making"`` (the default: everything above) or ``"execution"``: the
            optimal-execution problem (``jaxmm.execution.ExecutionEnv``: sell
            ``execution_inventory`` shares over the session; action: the fraction of the
            inventory to sell each step), evaluated against TWAP, the CJP closed form and the
            exact discrete optimum (``jaxmm.execution.riccati``). The market-making fields
            (``phi``, ``reward``, ``features``, ``action_mode``, regimes, fill shape,
            ``naive_half_spread``, ``as_gamma``) do not apply to it.
        execution_inventory, execution_S0, execution_sigma, execution_k, execution_b,
            execution_phi, execution_alpha, execution_T, execution_steps: the
            ``jaxmm.execution.ExecutionParams`` (``inventory``, ``S0``, ``sigma``, ``k``,
            ``b``, ``phi``, ``alpha``, ``T``, ``n_steps``) of the execution task; the defaults
            are ``ExecutionParams()``'s.
        alpha_model, alpha_rate, alpha_vol, alpha0: the short-term alpha signal
            (``MarketParams.alpha_model``: ``"none"`` or ``"ou"`` with ``alpha_rate > 0`` per
            time unit, ``alpha_vol >= 0``, ``alpha0``; the numbers must stay 0 with
            ``"none"``). Train with ``features="alpha"`` so the agent sees it; the optimum is
            then ``mm.optimal.bellman_alpha`` on ``alpha_grid_points`` alpha points.
        mo_cost, mo_permanent_impact: market orders as a control (``MarketParams.mo_cost``
            and ``mo_permanent_impact``, price units): ``mo_cost = -1`` (the default; a
            finite number, so the config stays plain JSON) means no market orders (the market
            is the default one); ``mo_cost >= 0`` lets the desk send them, which
            ``action_mode="depths_mo"`` requires (PPO then chooses a market order
            beside its depths). The optimum is then the joint-action ``optimal.bellman``, and
            every strategy is scored on the same market. ``mo_permanent_impact = 0`` is off.
        ou_rate, ou_level: with ``ou_rate > 0`` the mid is Ornstein-Uhlenbeck
            (``MarketParams.price_model="ou"``: ``dS = ou_rate (ou_level - S) dt + sigma dW``,
            ``ou_rate`` per time unit, ``ou_level`` in price units, 0: the market's ``S0``).
            There is no exact optimum (the value depends on S): the evaluation's reference is
            the mean-reversion-blind table, ``bellman`` on the arithmetic mid (best known, not
            the optimum). The agent sees the mid through ``mid_change``.
        arrival_model, hawkes_decay, hawkes_self, hawkes_cross: ``"hawkes"`` trains on
            self-exciting market-order flow (``MarketParams.arrival_model``): the homework's
            base intensity A = 100 per side, the kernel's decay (per time unit) and the jumps
            of the intensity per same-side and per other-side order (per time unit); the
            market then fills by Poisson thinning (``fill_model="exponential"``; the
            homework's ``"linear"`` has no arrival count). The Hawkes numbers are ignored
            under ``"poisson"``. There is no exact optimum under clustering: the evaluation's
            reference is the Poisson-optimal table (``train.evaluate.optimal_solution``).
            Pair it with ``features="hawkes"`` for an agent that sees the intensity.
        hawkes_mean_intensity: with ``"hawkes"``, if > 0 the base intensity ``A`` is set so
            that the stationary mean intensity per side is this (per time unit; ``A = mean (1
            - n_dt)`` with ``n_dt`` the stepped chain's branching ratio), which holds the mean
            order flow fixed while the clustering varies; 0 keeps the homework's ``A``.
        hawkes_start: the excitation at reset (``MarketParams.hawkes_start``): ``"rest"``
            (0) or ``"mean"`` (the stationary mean: the mean intensity is then stationary
            from the first step).
    """

    phi: float = 0.01
    reward: str = "inventory_penalty"
    features: str = "full"
    action_mode: str = "depths"
    total_timesteps: int = 500_000
    num_envs: int = 64
    num_steps: int = 8
    stagger_envs: bool = True
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 1.0
    gae_lambda: float = 0.8
    clip_eps: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    reward_scale: float = 0.1
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    init_log_std: float = 0.0
    init_action: tuple[float, ...] | None = None
    normalize_obs: bool = False
    average_window: float = 0.2
    seed: int = 0
    num_seeds: int = 4
    devices: int = 0
    platform: str | None = None
    name: str = "ppo"
    out_dir: str = "runs"
    num_evals: int = 10
    progress_episodes: int = 500
    eval_episodes: int = 10_000
    eval_seed: int = 1000
    naive_half_spread: float = 0.5
    as_gamma: float = 0.1
    vol_switch_step: int = NEVER
    vol_switch_factor: float = 1.0
    random_regimes: bool = False
    regime_switch_prob: float = 0.5
    regime_step_low: int = 20
    regime_step_high: int = 180
    regime_factor_low: float = 0.5
    regime_factor_high: float = 3.0
    fill_shape: str = "exponential"
    fill_shape_alpha: float = 0.0
    fill_model: str = "linear"
    task: str = "market_making"
    execution_inventory: float = ExecutionParams.inventory
    execution_S0: float = ExecutionParams.S0
    execution_sigma: float = ExecutionParams.sigma
    execution_k: float = ExecutionParams.k
    execution_b: float = ExecutionParams.b
    execution_phi: float = ExecutionParams.phi
    execution_alpha: float = ExecutionParams.alpha
    execution_T: float = ExecutionParams.T
    execution_steps: int = 50
    alpha_model: str = "none"
    alpha_rate: float = 0.0
    alpha_vol: float = 0.0
    alpha0: float = 0.0
    alpha_grid_points: int = 41
    mo_cost: float = MO_OFF
    mo_permanent_impact: float = 0.0
    ou_rate: float = 0.0
    ou_level: float = 0.0
    arrival_model: str = "poisson"
    hawkes_decay: float = 0.0
    hawkes_self: float = 0.0
    hawkes_cross: float = 0.0
    hawkes_mean_intensity: float = 0.0
    hawkes_start: str = "rest"

    @property
    def batch_size(self) -> int:
        """Transitions per update and seed: ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """PPO updates per seed: ``total_timesteps // batch_size``."""
        return self.total_timesteps // self.batch_size

    @property
    def polyak(self) -> float:
        """Decay per update of the parameter average: ``1 - 1 / (average_window *
        num_updates)``, 0 (no averaging) when that time constant is below one update."""
        time_constant = self.average_window * self.num_updates
        return 1.0 - 1.0 / time_constant if time_constant > 1 else 0.0

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def validate(self) -> PPOConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        check_choices(
            self,
            {
                "reward": rewards.REWARDS,
                "features": FEATURES,
                "action_mode": ACTION_MODES,
                "activation": tuple(ACTIVATIONS),
                "fill_model": FILL_MODELS,
            },
        )
        self._validate_budget()
        ranges = (
            ("phi", lambda x: x >= 0, ">= 0"),
            ("learning_rate", lambda x: x > 0, "> 0"),
            ("gamma", lambda x: 0 <= x <= 1, "in [0, 1]"),
            ("gae_lambda", lambda x: 0 <= x <= 1, "in [0, 1]"),
            ("clip_eps", lambda x: x > 0, "> 0"),
            ("ent_coef", lambda x: x >= 0, ">= 0"),
            ("vf_coef", lambda x: x > 0, "> 0"),
            ("max_grad_norm", lambda x: x > 0, "> 0"),
            ("reward_scale", lambda x: x > 0, "> 0"),
            ("init_log_std", math.isfinite, "finite"),
            ("average_window", lambda x: 0 <= x <= 1, "in [0, 1]"),
            ("naive_half_spread", lambda x: x > 0, "> 0"),
            ("as_gamma", lambda x: x >= 0, ">= 0"),
            ("hawkes_mean_intensity", lambda x: x >= 0, ">= 0 (0: the homework's A)"),
        )
        check_ranges(self, ranges)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes = {self.hidden_sizes!r}; allowed: widths >= 1")
        self._validate_task()
        self._validate_market()
        self._validate_run()
        return self

    def _validate_budget(self) -> None:
        """The counts and the batch: ``num_envs * num_steps`` divides into minibatches and
        fits at least once in ``total_timesteps``."""
        positive_ints = ("num_envs", "num_steps", "update_epochs", "num_minibatches", "num_seeds")
        check_counts(self, (*positive_ints, "num_evals", "progress_episodes", "eval_episodes"))
        if self.eval_episodes < 2:
            raise ValueError(f"eval_episodes = {self.eval_episodes}; allowed: an integer >= 2")
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"total_timesteps = {self.total_timesteps}; allowed: >= num_envs * num_steps "
                f"= {self.batch_size} (one update)"
            )
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches = {self.num_minibatches}; allowed: a divisor of "
                f"num_envs * num_steps = {self.batch_size}"
            )

    def _validate_task(self) -> None:
        """``task`` and what it rules out (``execution_*`` checked by ``ExecutionParams``),
        then the random regimes (checked by ``RegimeRandomization``)."""
        if self.task not in TASKS:
            raise ValueError(f"task = {self.task!r}; allowed: one of {TASKS}")
        if self.task == "execution":
            if self.random_regimes:
                raise ValueError(
                    "random_regimes = True; allowed: False with task = 'execution' (the "
                    "regimes are market-making volatility switches)"
                )
            try:
                execution_env(self)
            except ValueError as error:  # ExecutionParams names the field without the prefix
                raise ValueError(f"execution_*: {error}") from None
        if self.random_regimes:
            if self.vol_switch_step != NEVER:
                raise ValueError(
                    f"vol_switch_step = {self.vol_switch_step}; allowed: unset (the default) "
                    "when random_regimes is on (each episode draws its own switch)"
                )
            self.regimes().validate(market_env(self)[1].max_steps_in_episode)

    def _validate_market(self) -> None:
        """The market's options (fill shape, alpha, market orders, OU mid, Hawkes flow), most
        of them by building the market (``MarketParams.validate`` names the field)."""
        if self.fill_shape != "exponential" or self.fill_shape_alpha:
            try:
                market_env(self)
            except ValueError as error:  # MarketParams names fill_shape / fill_shape_alpha
                raise ValueError(f"fill_shape / fill_shape_alpha: {error}") from None
        self._validate_alpha()
        self._validate_market_orders()
        if self.ou_rate != 0 or self.ou_level != 0:
            if not (math.isfinite(self.ou_rate) and self.ou_rate > 0):
                raise ValueError(
                    f"ou_rate = {self.ou_rate!r}; allowed: > 0 per time unit (the "
                    "Ornstein-Uhlenbeck mid), or 0 (off, and then ou_level must be 0 too)"
                )
            if not math.isfinite(self.ou_level):
                raise ValueError(f"ou_level = {self.ou_level!r}; allowed: finite (price units)")
        if self.arrival_model != "poisson":
            try:
                market_env(self)
            except ValueError as error:  # MarketParams names arrival_model / hawkes_*
                raise ValueError(f"arrival_model / hawkes_*: {error}") from None

    def _validate_run(self) -> None:
        """Where the run goes: ``devices``, ``platform`` and ``name``."""
        if isinstance(self.devices, bool) or not isinstance(self.devices, int):
            raise ValueError(f"devices = {self.devices!r}; allowed: 0 (auto) or an integer >= 1")
        if self.devices < 0 or (self.devices and self.num_seeds % self.devices):
            raise ValueError(
                f"devices = {self.devices}; allowed: 0 (auto) or a divisor of num_seeds = "
                f"{self.num_seeds}"
            )
        if self.platform not in (None, *PLATFORMS):
            raise ValueError(f"platform = {self.platform!r}; allowed: None or one of {PLATFORMS}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name = {self.name!r}; allowed: a non-empty folder name")

    def _validate_alpha(self) -> None:
        numbers = {"alpha_rate": self.alpha_rate, "alpha_vol": self.alpha_vol}
        numbers["alpha0"] = self.alpha0
        if self.alpha_model == "none":
            for name, value in numbers.items():
                if value:
                    raise ValueError(
                        f"{name} = {value!r} with alpha_model = 'none'; allowed: 0 unless "
                        "alpha_model is 'ou'"
                    )
            if self.features == "alpha":
                raise ValueError(
                    "features = 'alpha' needs alpha_model = 'ou' (the market has no alpha)"
                )
            return
        grid = self.alpha_grid_points
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3 or grid % 2 == 0:
            raise ValueError(f"alpha_grid_points = {grid!r}; allowed: an odd integer >= 3")
        try:
            market_env(self)
        except ValueError as error:  # MarketParams names alpha_model / alpha_rate / ...
            raise ValueError(f"alpha_model / alpha_rate / alpha_vol / alpha0: {error}") from None

    def _validate_market_orders(self) -> None:
        on = self.mo_cost != MO_OFF
        if on and not (math.isfinite(self.mo_cost) and self.mo_cost >= 0):
            raise ValueError(
                f"mo_cost = {self.mo_cost!r}; allowed: finite and >= 0 (price units), or -1 "
                "(the default: no market orders)"
            )
        impact = self.mo_permanent_impact
        if not (math.isfinite(impact) and impact >= 0):
            raise ValueError(f"mo_permanent_impact = {impact!r}; allowed: finite and >= 0")
        if impact and not on:
            raise ValueError(
                f"mo_permanent_impact = {impact!r} with mo_cost = -1 (off); allowed: 0, or "
                "mo_cost >= 0 (market orders on)"
            )
        if self.action_mode == "depths_mo" and not on:
            raise ValueError(
                "action_mode = 'depths_mo' needs market orders; allowed: mo_cost >= 0 (price units)"
            )

    def regimes(self) -> RegimeRandomization | None:
        """The regime distribution of ``random_regimes`` (``None`` when it is off)."""
        if not self.random_regimes:
            return None
        return RegimeRandomization(
            switch_prob=self.regime_switch_prob,
            step_low=self.regime_step_low,
            step_high=self.regime_step_high,
            factor_low=self.regime_factor_low,
            factor_high=self.regime_factor_high,
        )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPOConfig:
        return config_from_dict(cls, values)


def check_choices(config: Any, choices: dict[str, tuple[str, ...]]) -> None:
    """``ValueError`` for the first field of ``config`` not among its allowed values
    (``choices``: field name -> allowed values)."""
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} = {getattr(config, name)!r}; allowed: one of {allowed}")


def check_counts(config: Any, names: tuple[str, ...]) -> None:
    """``ValueError`` for the first of the fields ``names`` of ``config`` that is not an
    integer >= 1 (booleans refused)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r}; allowed: an integer >= 1")


def check_ranges(config: Any, ranges: tuple[tuple[str, Callable[[float], bool], str], ...]) -> None:
    """``ValueError`` for the first field of ``config`` that is not finite and ``ok``
    (``ranges``: ``(name, ok, allowed)`` triples, ``allowed`` the range in words)."""
    for name, ok, allowed in ranges:
        value = getattr(config, name)
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{name} = {value!r}; allowed: {allowed}")


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    special: dict[str, tuple[tuple[str, ...], dict[str, Any]]] | None = None,
    help_text: dict[str, str] | None = None,
) -> None:
    """One ``--field-name`` flag per field of the config dataclass ``cls``, defaulting to
    ``cls()``: booleans as ``--x/--no-x``, tuples as ``nargs="+"`` integers, the rest typed as
    their default. ``special[name] = (more option strings, add_argument keywords)`` replaces
    a field's flag; ``help_text[name]`` is its help (default: blank)."""
    special = special or {}
    help_text = help_text or {}
    defaults = cls()
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = help_text.get(field.name, " ")
        if field.name in special:
            aliases, keywords = special[field.name]
            parser.add_argument(flag, *aliases, **keywords)
        elif isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(default), help=text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=text)


def add_config_flag(parser: argparse.ArgumentParser, cls: type, example: str) -> None:
    """The ``--config FILE`` option ``parse_config_flags`` reads: a JSON file of ``cls``
    fields (``example``: which file of a run, for the help) that flags override."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"start from the {cls.__name__} fields in this JSON file ({example}); flags given "
        "on the command line override them",
    )


def parse_config_flags(
    parser: argparse.ArgumentParser, cls: type, argv: list[str] | None
) -> tuple[dict[str, Any], argparse.Namespace]:
    """Parse ``argv`` with the flags of ``add_field_flags`` and ``add_config_flag``:
    the JSON file's fields (``cls.from_dict``) become the defaults, flags override them.
    Returns ``(values, args)``: ``values`` the field values (lists as tuples), ready for
    ``cls(**values)``; a bad file is a parser error."""
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        try:
            base = cls.from_dict(json.loads(known.config.read_text()))
        except (OSError, ValueError, TypeError) as error:
            parser.error(f"--config {known.config}: {error}")
        parser.set_defaults(**base.to_dict())
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    values["hidden_sizes"] = tuple(values["hidden_sizes"])
    if values["init_action"] is not None:
        values["init_action"] = tuple(values["init_action"])
    return values, args


def config_to_dict(config: Any) -> dict[str, Any]:
    """A training config dataclass as a plain dict (its ``config.json``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for a training config dataclass read from JSON: unknown fields are a
    ``ValueError`` naming them, and the JSON lists ``init_action``/``hidden_sizes`` become
    tuples (``PPOConfig`` and ``train.diffsim.DiffSimConfig``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = dict(values)
    if values.get("init_action") is not None:
        values["init_action"] = tuple(values["init_action"])
    if "hidden_sizes" in values:
        values["hidden_sizes"] = tuple(values["hidden_sizes"])
    return cls(**values)


def market_env(config: PPOConfig) -> tuple[MarketMakingEnv, EnvParams]:
    """The ``MarketMakingEnv`` (homework market, with the volatility switch of
    ``vol_switch_step``/``vol_switch_factor``, the fill shape, the alpha signal, market orders
    and the Hawkes flow if set) and the ``EnvParams`` that ``config`` describes: ``phi``,
    ``reward`` and ``as_gamma`` (the A-S spread feature and ``as_skew``). With
    ``task = "execution"``: ``execution_env(config)`` instead."""
    if config.task == "execution":
        return execution_env(config)
    env = MarketMakingEnv(features=config.features, action_mode=config.action_mode)
    market_params = env.default_params.market.replace(
        vol_switch_step=config.vol_switch_step,
        vol_switch_factor=config.vol_switch_factor,
        fill_shape=config.fill_shape,
        fill_shape_alpha=config.fill_shape_alpha if config.fill_shape == "power" else None,
        fill_model=config.fill_model,
    )
    if config.alpha_model != "none":
        market_params = market_params.replace(
            alpha_model=config.alpha_model,
            alpha_rate=config.alpha_rate,
            alpha_vol=config.alpha_vol,
            alpha0=config.alpha0,
        )
    if config.mo_cost != MO_OFF:  # market orders on (-1: the default market)
        market_params = market_params.replace(
            mo_cost=config.mo_cost,
            mo_permanent_impact=config.mo_permanent_impact or None,
        )
    if config.ou_rate != 0:
        market_params = market_params.replace(
            price_model="ou",
            ou_rate=config.ou_rate,
            ou_level=config.ou_level if config.ou_level else market_params.S0,
        )
    if config.arrival_model != "poisson":
        market_params = market_params.replace(
            arrival_model=config.arrival_model,
            fill_model="exponential",
            hawkes_decay=config.hawkes_decay,
            hawkes_self=config.hawkes_self,
            hawkes_cross=config.hawkes_cross,
            hawkes_start=config.hawkes_start,
        )
        if config.hawkes_mean_intensity > 0:
            market_params = with_hawkes_mean_intensity(market_params, config.hawkes_mean_intensity)
    env_params = env.default_params.replace(
        market=market_params.validate(),
        phi=config.phi,
        reward=config.reward,
        as_gamma=config.as_gamma,
    )
    return env, env_params.validate()


def execution_env(config: PPOConfig) -> tuple[ExecutionEnv, ExecutionParams]:
    """The ``ExecutionEnv`` and the validated ``ExecutionParams`` of the ``execution_*``
    fields."""
    params = ExecutionParams(
        inventory=config.execution_inventory,
        S0=config.execution_S0,
        sigma=config.execution_sigma,
        k=config.execution_k,
        b=config.execution_b,
        phi=config.execution_phi,
        alpha=config.execution_alpha,
        T=config.execution_T,
        n_steps=config.execution_steps,
    )
    return ExecutionEnv(), params.validate()


def with_hawkes_mean_intensity(market_params: MarketParams, mean: float) -> MarketParams:
    """``market_params`` (Hawkes flow) with ``A`` scaled so that the stationary mean intensity
    of the bid side is ``mean`` per time unit (the chain is linear in ``A``: ``A' = A mean /
    lambda_bar``); with equal side multipliers both sides then have mean ``mean``. The
    branching ratio is validated first (at ``A = 1``), then the result."""
    unit = market_params.replace(A=1.0).validate()
    bid, _ = hawkes_stationary_intensity(unit)
    if not float(bid) > 0:
        raise ValueError(
            f"hawkes_mean_intensity = {mean}: the bid side has no base intensity "
            f"(bid_intensity_mult = {market_params.bid_intensity_mult}); allowed: a positive "
            "multiplier"
        )
    return market_params.replace(A=mean / float(bid)).validate()


def initial_action(config: PPOConfig, env: Any, env_params: Any) -> np.ndarray:
    """The mean action of a fresh agent, ``f32[action_dim]``, strictly inside the Box.

    ``config.init_action`` if given; else, for ``MarketMakingEnv``, the Avellaneda-Stoikov
    quote (``as_gamma``) at the start of the session with no inventory -- in ``"depths"`` mode
    its half-spread on both sides (``"depths_mo"``: and no market order, 0), in ``"as_skew"``
    mode ``(0, 0)``; for ``ExecutionEnv`` TWAP's first sale, the fraction ``1 / n_steps``; else
    the centre of the Box.
    """
    space = env.action_space(env_params)
    low = np.broadcast_to(np.asarray(space.low, np.float64), space.shape).ravel()
    high = np.broadcast_to(np.asarray(space.high, np.float64), space.shape).ravel()
    if config.init_action is not None:
        action = np.asarray(config.init_action, np.float64)
    elif isinstance(env, ExecutionEnv):
        action = np.full(low.shape, 1.0 / env_params.n_steps)
    elif isinstance(env, MarketMakingEnv) and env.action_mode in ("depths", "depths_mo"):
        start = market.reset(jax.random.key(0), env_params.market)
        half_spread = 0.5 * float(
            AvellanedaStoikov(env_params.as_gamma).spread(start, env_params.market)
        )
        action = np.full(low.shape, half_spread)
        if env.action_mode == "depths_mo":
            action[2] = 0.0  # no market order
    elif isinstance(env, MarketMakingEnv):
        action = np.zeros(low.shape)
    else:
        action = 0.5 * (low + high)
    if action.shape != low.shape or not np.all((low < action) & (action < high)):
        raise ValueError(
            f"init_action = {tuple(action.tolist())}; allowed: {low.size} values strictly "
            f"between the action bounds {tuple(low.tolist())} and {tuple(high.tolist())}"
        )
    return action


def agent_spec(config: PPOConfig, env: Any, env_params: Any) -> AgentSpec:
    """The agent's architecture for ``env`` (call outside ``jit``): the ``ActorCritic`` of
    ``config`` whose fresh mean action is ``initial_action`` (the last layer's bias is its
    logit), and the action Box of ``env.action_space(env_params)``, which must be bounded."""
    space = env.action_space(env_params)
    low = np.broadcast_to(np.asarray(space.low, np.float64), space.shape).ravel()
    high = np.broadcast_to(np.asarray(space.high, np.float64), space.shape).ravel()
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
        raise ValueError(f"the action space must be a bounded Box, got low={low}, high={high}")
    fraction = (initial_action(config, env, env_params) - low) / (high - low)
    network = ActorCritic(
        action_dim=low.size,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
        init_log_std=config.init_log_std,
        init_raw_mean=tuple(float(x) for x in np.log(fraction / (1.0 - fraction))),
    )
    return AgentSpec(
        network=network,
        obs_dim=int(np.prod(env.observation_space(env_params).shape)),
        action_low=tuple(float(x) for x in low),
        action_high=tuple(float(x) for x in high),
    )
