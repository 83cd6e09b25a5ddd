"""The simulator: policies against the sandbox market on a virtual clock (``run_simulation``)."""

from campaignd.sim.driver import run_simulation, simulate

__all__ = ["run_simulation", "simulate"]
