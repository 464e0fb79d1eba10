"""An experiment (benchmarks/gpu_next.sh 31, 33): the interpreter's switch interval at 10 us
instead of the server's 50, set wherever the server sets its own (on PYTHONPATH, Python imports
this at start-up)."""

import sys

_set_switch_interval = sys.setswitchinterval
sys.setswitchinterval = lambda seconds: _set_switch_interval(10e-6)
