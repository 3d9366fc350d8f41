"""`python -m lasp ...` (also what `torchrun -m lasp` runs)."""
import sys

from lasp.cli import main

sys.exit(main())
