"""Print (and optionally write) the zoo's model table: measured params/FLOPs next to the papers' claims.

Usage: python tools/model_table.py [--out table.md] [--pattern 'dna_*']
"""

from zoo.cli import main

if __name__ == '__main__':
    import sys

    sys.exit(main(['demo', *sys.argv[1:]]))
