"""The `ramparts` command line: one module per command, assembled in `ramparts.cli.main`."""

import os

# Before torch loads OpenMP: threads that wait sleep instead of spinning. On a shared machine (more
# busy threads than cores) spinning OpenMP threads made training and attacks ~10x slower; sleeping
# costs nothing measurable on an idle one. A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
