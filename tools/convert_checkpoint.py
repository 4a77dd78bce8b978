"""Convert an authors' released checkpoint into one of our models' state dicts (safetensors).

Usage: python tools/convert_checkpoint.py --family bossnas|dna|pinas|nasvit [--model NAME] [--ema] [--overwrite] SRC DST

The key maps live in ``zoo.convert`` and the NASViT slicing rule in ``backbones.nasvit_supernet`` (see docs/convert.md);
this is only the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zoo.convert import FAMILIES, MODELS, convert_file


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; returns 0, or 2 with one line ``error: ...`` on stderr when anything is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', required=True, choices=FAMILIES)
    parser.add_argument(
        '--model',
        default=None,
        help='our model name (default: from the file where unambiguous; required for nasvit). '
        + '; '.join(f'{f}: {", ".join(m)}' for f, m in MODELS.items()),
    )
    parser.add_argument('--ema', action='store_true', help="convert the EMA weights ('model_ema' / 'state_dict_ema')")
    parser.add_argument('--overwrite', action='store_true', help='replace DST if it exists (default: refuse)')
    parser.add_argument('src', help='official .pth / .pth.tar checkpoint')
    parser.add_argument('dst', help='output .safetensors file (written atomically)')
    args = parser.parse_args(argv)
    try:
        state = convert_file(
            args.family, args.src, args.dst, model_name=args.model, use_ema=args.ema, overwrite=args.overwrite
        )
    except (ValueError, KeyError, OSError) as err:  # every message names its file (source or destination) once
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'error: {message}', file=sys.stderr)
        return 2
    print(f'{args.dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values')
    if args.family == 'nasvit':
        if not args.ema:
            print("note: NASViT's official evaluation uses 'model_ema' (pass --ema for the README weights)")
        print('note: recalibrate BatchNorm statistics for this subnet before evaluating (as the official code does)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
