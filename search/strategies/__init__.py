"""Search strategies that turn rated candidates into architectures under a resource constraint."""

from .budgeted import Candidate, Solution, brute_force_search, exact_search, pareto_front
from .evolution import EvolutionConfig, EvolutionResult, Individual, evolution_search

__all__ = ['Candidate', 'Solution', 'brute_force_search', 'exact_search', 'pareto_front']
__all__ += ['EvolutionConfig', 'EvolutionResult', 'Individual', 'evolution_search']
