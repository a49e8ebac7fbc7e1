"""python -m analysis --experiment mnist --out reports/"""

from analysis.cli import analyze

analyze()
