"""The one build path of the families (``backbones._builder.FamilyBuilder``): what each family configures in it."""

from __future__ import annotations

import pytest
import timm
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import FeatureGraphNet

from backbones import mbconv, nasvit, nb201


def test_family_defaults_apply_unless_the_caller_sets_them() -> None:
    assert timm.create_model('mbconv').drop_rate == 0.2
    assert timm.create_model('mbconv', drop_rate=0.0).drop_rate == 0.0
    assert timm.create_model('nb201').drop_rate == 0.0


def test_features_only_uses_the_familys_own_class_unless_a_timm_wrapper_is_asked_for() -> None:
    own = timm.create_model('mbconv', features_only=True, out_indices=(1, 2))
    assert isinstance(own, mbconv.MBConvNetFeatures) and own.spec == mbconv.validate_spec(mbconv.SPECS['mbconv'])
    fx = timm.create_model('mbconv', features_only=True, out_indices=(1, 2), feature_cls='fx')
    assert isinstance(fx, FeatureGraphNet) and fx.spec == own.spec
    assert isinstance(timm.create_model('nb201', features_only=True), FeatureGetterNet)


def test_spec_dependent_cfg_and_the_callers_overlay_on_top() -> None:
    spec = nasvit.SPECS['nasvit_a3']
    assert timm.create_model('nasvit', spec=spec).pretrained_cfg['input_size'] == (3, 256, 256)
    model = timm.create_model('nasvit', spec=spec, pretrained_cfg_overlay={'input_size': (3, 224, 224)})
    assert model.pretrained_cfg['input_size'] == (3, 224, 224)


def test_invalid_spec_and_out_indices_fail_before_building() -> None:
    with pytest.raises(ValueError, match="'channels'"):
        timm.create_model('nb201', spec={**nb201.SPECS['nb201'], 'channels': -1})
    with pytest.raises(ValueError, match='nb201: out_indices entry 3 is out of range'):
        timm.create_model('nb201', features_only=True, out_indices=(3,))
