"""supernet-zoo: architectures found by weight-sharing NAS papers, one ``timm.create_model`` away.

Importing ``zoo`` registers every family with timm (``timm.create_model('dna_c')`` then works).
"""

from backbones import SpecError

from .api import FAMILY_ENTRYPOINTS, UnknownModelError, create_model, get_spec, list_models, model_info
from .catalog import CATALOG, FlopsRule, ModelRecord
from .flops import count_macs, count_params
from .hub import push_to_hub, save_for_hub
from .onnx import export_onnx
from .spec import spec_from_json, spec_of, spec_to_json, validate_spec

__all__ = [
    'CATALOG',
    'FAMILY_ENTRYPOINTS',
    'FlopsRule',
    'ModelRecord',
    'SpecError',
    'UnknownModelError',
    'count_macs',
    'count_params',
    'create_model',
    'export_onnx',
    'get_spec',
    'list_models',
    'model_info',
    'push_to_hub',
    'save_for_hub',
    'spec_from_json',
    'spec_of',
    'spec_to_json',
    'validate_spec',
]
__version__ = '0.1.0'
