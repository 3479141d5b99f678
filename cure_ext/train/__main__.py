"""`python -m cure_ext.train` is `cure-train`."""
import sys

from .cli import train_main

sys.exit(train_main())
