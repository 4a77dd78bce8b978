"""Search strategies that turn rated candidates into architectures under a resource constraint."""

from .action_space import ActionSpaceConfig, ActionSpaceResult, ActionSpaceSearch, action_space_search
from .budgeted import Candidate, Solution, brute_force_search, exact_search, pareto_front
from .evolution import EvolutionConfig, EvolutionResult, Individual, evolution_search

__all__ = ['Candidate', 'Solution', 'brute_force_search', 'exact_search', 'pareto_front']
__all__ += ['ActionSpaceConfig', 'ActionSpaceResult', 'ActionSpaceSearch', 'action_space_search']
__all__ += ['EvolutionConfig', 'EvolutionResult', 'Individual', 'evolution_search']
