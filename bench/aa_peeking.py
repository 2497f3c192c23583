"""A/A peeking benchmark: false positives of the sequential test vs a fixed z-test read daily.

500 seeded A/A experiments (binary metric, p = 0.1, 200 users per arm per day) are looked at
every day for 30 days. An experiment counts as a false positive if any look is significant.
The fixed-horizon z-test is valid only at its planned end, so peeking at it inflates the rate;
the confidence sequence keeps it at or below α. Prints both rates and their ratio.

    python bench/aa_peeking.py
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.stats import proportion_arm, sequential_test, two_proportion_z_test

SIMULATIONS = 500
DAYS = 30
USERS_PER_ARM_PER_DAY = 200
BASE_RATE = 0.1
ALPHA = 0.05
SEED = 20240601


@dataclass(frozen=True)
class PeekingRates:
    """Share of A/A experiments flagged at any daily look, per method."""

    sequential: float
    fixed_z: float
    seconds: float

    @property
    def ratio(self) -> float:
        """How many times more often the peeked fixed test cries wolf."""
        return self.fixed_z / self.sequential if self.sequential else float("inf")


def simulate(
    simulations: int = SIMULATIONS,
    days: int = DAYS,
    users_per_arm_per_day: int = USERS_PER_ARM_PER_DAY,
    base_rate: float = BASE_RATE,
    alpha: float = ALPHA,
    seed: int = SEED,
) -> PeekingRates:
    """Run the A/A experiments and return each method's any-look false-positive rate."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    # Cumulative conversions per (experiment, day, arm): both arms share one true rate.
    daily = rng.binomial(users_per_arm_per_day, base_rate, size=(simulations, days, 2))
    conversions = np.cumsum(daily, axis=1)
    users = users_per_arm_per_day * np.arange(1, days + 1)
    planned_total = 2 * users_per_arm_per_day * days  # N* = the planned total sample

    sequential_hits = 0
    fixed_hits = 0
    for experiment in conversions:
        sequential_flagged = fixed_flagged = False
        for n, (x_a, x_b) in zip(users, experiment, strict=True):
            control = proportion_arm(int(n), int(x_a))
            treatment = proportion_arm(int(n), int(x_b))
            if not sequential_flagged:
                sequential_flagged = sequential_test(
                    control, treatment, alpha=alpha, n_star=planned_total
                ).significant
            if not fixed_flagged:
                fixed_flagged = two_proportion_z_test(control, treatment, alpha=alpha).significant
            if sequential_flagged and fixed_flagged:
                break
        sequential_hits += sequential_flagged
        fixed_hits += fixed_flagged
    return PeekingRates(
        sequential=sequential_hits / simulations,
        fixed_z=fixed_hits / simulations,
        seconds=time.perf_counter() - started,
    )


def main() -> PeekingRates:
    """Print the false-positive rates of both methods under daily peeking."""
    rates = simulate()
    print(
        f"A/A peeking: {SIMULATIONS} experiments, {DAYS} daily looks, "
        f"{USERS_PER_ARM_PER_DAY} users/arm/day, p = {BASE_RATE}, alpha = {ALPHA}"
    )
    print(f"  sequential (confidence sequence) false-positive rate: {rates.sequential:.3f}")
    print(f"  fixed-horizon z-test, peeked daily, false-positive rate: {rates.fixed_z:.3f}")
    print(f"  ratio fixed / sequential: {rates.ratio:.1f}x   ({rates.seconds:.1f} s)")
    return rates


if __name__ == "__main__":
    main()
