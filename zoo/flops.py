"""Parameter and multiply-accumulate counting (torch's flop counter; see ``backbones._flops``)."""

from backbones._flops import count_macs, count_params

__all__ = ['count_macs', 'count_params']
