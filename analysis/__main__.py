"""python -m analysis --experiment NAME --out reports/"""

from analysis.cli import analyze

analyze()
