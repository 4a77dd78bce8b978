"""Search strategies that turn rated candidates into architectures under a resource constraint."""

from .budgeted import Candidate, Solution, brute_force_search, exact_search, pareto_front

__all__ = ['Candidate', 'Solution', 'brute_force_search', 'exact_search', 'pareto_front']
