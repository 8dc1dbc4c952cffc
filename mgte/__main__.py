import sys

from mgte.cli import main

sys.exit(main())
