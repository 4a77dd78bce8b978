"""Weight-sharing search spaces: each is a supernet whose chosen paths are networks of one backbone family."""

from .mbconv import SPACES as MBCONV_SPACES
from .mbconv import BlockChoice, MBConvSpace, MBConvSupernet, get_space

__all__ = ['MBCONV_SPACES', 'BlockChoice', 'MBConvSpace', 'MBConvSupernet', 'get_space']
